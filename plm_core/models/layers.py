"""Building blocks of the BERT-style encoder: embeddings, attention, feed-forward, post-LN block.

The parameterisation follows the original BERT (and HF ``BertModel``) one to one: separate
query/key/value projections, learned absolute positions, post-LayerNorm residual blocks and an
exact (erf) GELU. That keeps ``plm_core.models.io.from_hf_bert_state_dict`` a pure renaming, so
published BERT weights load without any reshaping and parity tests can compare logits directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig


class Embeddings(nn.Module):
    """Token + segment + learned position embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.size(1)
        positions = torch.arange(T, device=input_ids.device)  # [T]
        # Without token_type_ids every token is in segment 0: add that row, no [B, T] lookup.
        segment = self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids)
        x = self.word(input_ids) + self.position(positions) + segment  # [B, T, H]
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    SDPA dispatches to the flash / memory-efficient kernels on GPU and to a fused kernel on CPU;
    the padding mask is a boolean "may attend" mask broadcast over heads and queries.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_dropout = cfg.attention_dropout
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """``x`` [B, T, H]; ``attend`` [B, 1, 1, T] bool (True = real key) or None (no padding)."""
        B, T, H = x.shape
        nh = self.num_heads
        q = self.query(x).view(B, T, nh, H // nh).transpose(1, 2)  # [B, nh, T, hd]
        k = self.key(x).view(B, T, nh, H // nh).transpose(1, 2)  # [B, nh, T, hd]
        v = self.value(x).view(B, T, nh, H // nh).transpose(1, 2)  # [B, nh, T, hd]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.attention_dropout if self.training else 0.0
        )  # [B, nh, T, hd]
        y = y.transpose(1, 2).reshape(B, T, H)  # [B, T, H]
        return self.dropout(self.out(y))


class FeedForward(nn.Module):
    """Position-wise GELU MLP (dropout on its output, as in BERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))  # [B, T, H]


class Block(nn.Module):
    """Post-LN transformer block: ``norm(x + attn(x))`` then ``norm(x + ffn(x))``, as in BERT."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, attend))  # [B, T, H]
        return self.ffn_norm(x + self.ffn(x))  # [B, T, H]


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) for linear and embedding weights, zero biases, unit LayerNorm.

    Applied with ``model.apply`` so every model built from these blocks starts the same way HF does.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
