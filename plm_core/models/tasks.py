"""Token-level task models over any family's body: token classification (NER) and extractive QA
(start/end span logits).

The body sits under ``encoder`` (BERT body, GPT body, or the seq2seq encoder stack), exactly as in
the pretraining wrappers, so ``io.load_encoder_into`` moves a pretrained body into these models.
A decoder body sees only the left context at each token, which is the known weakness of GPT-style
token labelling; it is offered for comparison, not as a recommendation.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.layers import init_bert_weights


def build_body(cfg: ModelConfig) -> nn.Module:
    """The bidirectional (or, for GPT, causal) stack that turns token ids into hidden states."""
    if cfg.family == "encoder":
        from plm_core.models.encoder import BertModel

        return BertModel(cfg)
    if cfg.family == "decoder":
        from plm_core.models.decoder import GPTModel

        return GPTModel(cfg)
    if cfg.family == "seq2seq":
        from plm_core.models.seq2seq import Seq2SeqEncoder, _init_weights

        body = Seq2SeqEncoder(cfg)
        _init_weights(body, cfg)
        return body
    raise ConfigError(f"unknown model family {cfg.family!r}")


def body_hidden(
    body: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """Hidden states [B, T, H] from any body; segment ids reach only the encoder family."""
    from plm_core.models.decoder import GPTModel
    from plm_core.models.encoder import BertModel

    if isinstance(body, BertModel):
        return body(input_ids, attention_mask, token_type_ids)
    if isinstance(body, GPTModel):
        return body(input_ids, attention_mask)[0]
    return body(input_ids, attention_mask)


class ForTokenClassification(nn.Module):
    """Body + dropout + linear: one label distribution per token (NER with BIO tags)."""

    def __init__(self, cfg: ModelConfig, num_labels: int) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"num_labels must be >= 2 for token classification, got {num_labels}")
        self.num_labels = num_labels
        self.encoder = build_body(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.classifier.apply(partial(init_bert_weights, std=cfg.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"logits" [B, T, C]} plus {"loss"} over tokens whose label is not -100 (subword
        continuations and padding carry -100)."""
        hidden = body_hidden(self.encoder, input_ids, attention_mask, token_type_ids)  # [B, T, H]
        logits = self.classifier(self.dropout(hidden))  # [B, T, C]
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return out


class ForQuestionAnswering(nn.Module):
    """Body + linear to two logits per token: where the answer starts and where it ends."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = build_body(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)
        self.qa_outputs.apply(partial(init_bert_weights, std=cfg.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"start_logits" [B, T], "end_logits" [B, T]} plus {"loss"} (the mean of the start and
        end cross-entropies, as in BERT's SQuAD head) when positions [B] are given. Padding
        positions get -inf so no span can start or end there."""
        hidden = body_hidden(self.encoder, input_ids, attention_mask, token_type_ids)  # [B, T, H]
        start, end = self.qa_outputs(hidden).unbind(-1)  # [B, T] each
        if attention_mask is not None:
            pad = attention_mask == 0
            start, end = start.masked_fill(pad, float("-inf")), end.masked_fill(pad, float("-inf"))
        out = {"start_logits": start, "end_logits": end}
        if start_positions is not None and end_positions is not None:
            out["loss"] = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return out
