"""BERT / ALBERT encoder body and its task wrappers (masked LM, MLM + NSP/SOP pretraining,
sequence classification).

ALBERT (Lan et al. 2020) is the BERT body with two parameter savings, both switched by
``ModelConfig``: ``arch="albert"`` factorises the word embeddings to ``embedding_size`` E and
projects them to the hidden size H (V*E + E*H parameters instead of V*H), and ``share_layers``
makes every layer reuse one block's parameters. The blocks themselves are BERT's (post-LN), which
is also what ALBERT's layers are.

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
from plm_core.models.heads import MLMHead, Pooler, SentenceRelationHead, embedding_width
from plm_core.models.layers import Block, Embeddings, init_bert_weights

IGNORE_INDEX = -100  # label of positions that carry no loss (torch's cross_entropy default)


def _check_encoder_config(cfg: ModelConfig) -> None:
    """Refuse settings this body would otherwise ignore silently."""
    if cfg.vocab_size <= 0:
        raise ConfigError("ModelConfig.vocab_size is 0; fill it from the tokenizer before building")
    if cfg.family != "encoder":
        raise ConfigError(f"the encoder body builds family 'encoder', not {cfg.family!r}")
    if cfg.position not in ("learned", "sinusoidal"):
        raise ConfigError(f"the encoder supports learned or sinusoidal positions, not {cfg.position!r}")
    if cfg.norm != "post":
        raise ConfigError("the encoder is post-LN (BERT/ALBERT); norm='pre' would need a final norm")
    if cfg.arch == "bert" and cfg.embedding_size not in (0, cfg.hidden_size):
        raise ConfigError(
            f"embedding_size {cfg.embedding_size} != hidden_size {cfg.hidden_size} is ALBERT's "
            "factorised embedding; set arch='albert'"
        )


class BertModel(nn.Module):
    """The encoder body: embeddings (+ E -> H projection for ALBERT) and a stack of post-LN
    blocks, returning [B, T, H].

    With ``share_layers`` the stack holds one block that runs ``num_layers`` times, so its
    parameters are stored (and counted, and updated) once; either way the block of layer ``i``
    is ``layers[i % len(layers)]`` and state-dict keys are ``layers.{j}.*``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_encoder_config(cfg)
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)  # [B, T, E]
        # ALBERT always has the projection (HF's embedding_hidden_mapping_in), even when E == H.
        self.embedding_projection = (
            nn.Linear(embedding_width(cfg), cfg.hidden_size) if cfg.arch == "albert" else None
        )
        self.layers = nn.ModuleList(Block(cfg) for _ in range(1 if cfg.share_layers else cfg.num_layers))
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
        x = self.embeddings(input_ids, token_type_ids)  # [B, T, E]
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)  # [B, T, H]
        for i in range(self.cfg.num_layers):
            x = self.layers[i % len(self.layers)](x, attend)  # [B, T, H]
        return x


def _masked_lm_output(head: MLMHead, hidden: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"loss", "logits" [M, V]} over the M positions whose label is not -100, in row-major order."""
    selected = labels != IGNORE_INDEX  # [B, T]
    logits = head(hidden[selected])  # [M, V]
    if logits.size(0) == 0:
        # No position selected (possible for very short inputs): a zero loss that still touches
        # every parameter keeps DDP ranks in step instead of averaging in a NaN.
        return {"loss": logits.sum() * 0.0, "logits": logits}
    return {"loss": F.cross_entropy(logits, labels[selected]), "logits": logits}


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
        return _masked_lm_output(self.mlm_head, hidden, labels)


class BertForPreTraining(BertForMaskedLM):
    """BERT/ALBERT pretraining: the masked LM plus a two-segment objective (NSP or SOP) on the
    pooled [CLS], with the two losses summed as in both papers.

    Keys are those of ``BertForMaskedLM`` plus ``pooler.*`` (as in the classifier, so a fine-tuned
    model may start from the pretrained pooler) and ``sentence_head.*``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.pooler = Pooler(cfg)
        self.sentence_head = SentenceRelationHead(cfg)
        init = partial(init_bert_weights, std=cfg.initializer_range)
        self.pooler.apply(init)
        self.sentence_head.apply(init)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sentence_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``labels`` [B, T] as for ``BertForMaskedLM``; ``sentence_labels`` [B] (0 = natural pair,
        1 = random / swapped). Returns {"sentence_logits" [B, 2], "logits"} and, per label given,
        "mlm_loss" / "sentence_loss", with "loss" their sum."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # [B, T, H]
        out = {"sentence_logits": self.sentence_head(self.pooler(hidden))}  # [B, 2]
        losses = []
        if labels is None:
            out["logits"] = self.mlm_head(hidden)  # [B, T, V]
        else:
            mlm = _masked_lm_output(self.mlm_head, hidden, labels)
            out["logits"], out["mlm_loss"] = mlm["logits"], mlm["loss"]
            losses.append(mlm["loss"])
        if sentence_labels is not None:
            out["sentence_loss"] = F.cross_entropy(out["sentence_logits"], sentence_labels)
            losses.append(out["sentence_loss"])
        if losses:
            out["loss"] = sum(losses)
        return out


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
