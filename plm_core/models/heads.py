"""Task heads that sit on an encoder body (x-transformers habit: bodies and heads are separate)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + GELU + LayerNorm, then a vocabulary decoder.

    The decoder weight is tied to the word embeddings by the owning model; only its bias is the
    head's own. The head is applied to the gathered masked positions only ([M, H], not [B, T, H]),
    so the vocabulary projection -- the largest matmul of a small model -- costs ~15% of a dense one.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [..., H] -> logits [..., V]."""
        return self.decoder(self.norm(F.gelu(self.transform(hidden))))


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the first ([CLS]) position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [B, T, H] -> pooled [B, H]."""
        return torch.tanh(self.dense(hidden[:, 0]))
