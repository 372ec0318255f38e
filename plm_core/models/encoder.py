"""BERT-style encoder body and its task wrappers (masked LM, sequence classification).

Every wrapper holds the body as ``encoder``, so all body weights live under ``encoder.*`` and a
pretrained body moves into any task model with ``plm_core.models.io.load_encoder_into``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.heads import MLMHead, Pooler
from plm_core.models.layers import Block, Embeddings, init_bert_weights

IGNORE_INDEX = -100  # label of positions that carry no loss (torch's cross_entropy default)


class BertModel(nn.Module):
    """The encoder body: embeddings and a stack of post-LN blocks, returning [B, T, H]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ConfigError("ModelConfig.vocab_size is 0; fill it from the tokenizer before building")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.apply(partial(init_bert_weights, std=cfg.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``input_ids`` [B, T]; ``attention_mask`` [B, T] with 1 = real, 0 = pad (None: no padding)."""
        if input_ids.size(1) > self.cfg.max_position:
            raise ConfigError(
                f"sequence length {input_ids.size(1)} exceeds max_position {self.cfg.max_position}"
            )
        # Packed pretraining batches have no padding; attn_mask=None keeps SDPA on its fastest kernel.
        attend = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B,1,1,T]
        x = self.embeddings(input_ids, token_type_ids)  # [B, T, H]
        for block in self.layers:
            x = block(x, attend)
        return x


class BertForMaskedLM(nn.Module):
    """Encoder + MLM head whose decoder weight is the word-embedding matrix (tied, as in BERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = BertModel(cfg)
        self.mlm_head = MLMHead(cfg)
        self.mlm_head.apply(partial(init_bert_weights, std=cfg.initializer_range))
        self.mlm_head.decoder.weight = self.encoder.embeddings.word.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """With ``labels`` [B, T] (-100 = no loss): {"loss", "logits" [M, V]} over the M labelled
        positions only, in row-major order. Without: {"logits" [B, T, V]} for every position."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # [B, T, H]
        if labels is None:
            return {"logits": self.mlm_head(hidden)}  # [B, T, V]
        selected = labels != IGNORE_INDEX  # [B, T]
        logits = self.mlm_head(hidden[selected])  # [M, V]
        if logits.size(0) == 0:
            # No position selected (possible for very short inputs): a zero loss that still touches
            # every parameter keeps DDP ranks in step instead of averaging in a NaN.
            return {"loss": logits.sum() * 0.0, "logits": logits}
        return {"loss": F.cross_entropy(logits, labels[selected]), "logits": logits}


class BertForSequenceClassification(nn.Module):
    """Encoder + pooler (dense + tanh on [CLS]) + dropout + linear classifier."""

    def __init__(self, cfg: ModelConfig, num_labels: int) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"num_labels must be >= 2 for classification, got {num_labels}")
        self.num_labels = num_labels
        self.encoder = BertModel(cfg)
        self.pooler = Pooler(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init = partial(init_bert_weights, std=cfg.initializer_range)
        self.pooler.apply(init)
        self.classifier.apply(init)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"logits" [B, num_labels]} plus {"loss"} (mean cross-entropy) when ``labels`` [B] is given."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # [B, T, H]
        logits = self.classifier(self.dropout(self.pooler(hidden)))  # [B, num_labels]
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out
