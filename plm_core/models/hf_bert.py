"""HF transformers ALBERT <-> our encoder: config and state-dict key mapping (the BERT mapping
lives in ``plm_core.models.io``).

Our ALBERT is ``BertModel`` with ``arch="albert"``, and its blocks are parameterised exactly as
HF's ``AlbertLayer`` (separate q/k/v, post-LN), so the mapping is a pure renaming. HF groups
layers (``num_hidden_groups`` groups of ``inner_group_num`` layers); ours are the two ends of that
range: ``share_layers`` = one group of one layer, else one group per layer, and our
``layers.{i}`` is HF's ``albert_layer_groups.{i}.albert_layers.0``.
"""

from __future__ import annotations

from typing import Any

import torch

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.heads import embedding_width
from plm_core.models.io import _rename, _template_regex

_LAYER = "albert.encoder.albert_layer_groups.{i}.albert_layers.0."
# Our names -> HF ALBERT names; "{i}" is a layer index. Prefix templates end with ".".
_HF_ALBERT_NAMES: list[tuple[str, str]] = [
    ("encoder.embeddings.word.", "albert.embeddings.word_embeddings."),
    ("encoder.embeddings.position.", "albert.embeddings.position_embeddings."),
    ("encoder.embeddings.token_type.", "albert.embeddings.token_type_embeddings."),
    ("encoder.embeddings.norm.", "albert.embeddings.LayerNorm."),
    ("encoder.embedding_projection.", "albert.encoder.embedding_hidden_mapping_in."),
    ("encoder.layers.{i}.attn.query.", _LAYER + "attention.query."),
    ("encoder.layers.{i}.attn.key.", _LAYER + "attention.key."),
    ("encoder.layers.{i}.attn.value.", _LAYER + "attention.value."),
    ("encoder.layers.{i}.attn.out.", _LAYER + "attention.dense."),
    ("encoder.layers.{i}.attn_norm.", _LAYER + "attention.LayerNorm."),
    ("encoder.layers.{i}.ffn.up.", _LAYER + "ffn."),
    ("encoder.layers.{i}.ffn.down.", _LAYER + "ffn_output."),
    ("encoder.layers.{i}.ffn_norm.", _LAYER + "full_layer_layer_norm."),
    ("pooler.dense.", "albert.pooler."),
    ("classifier.", "classifier."),
    ("sentence_head.classifier.", "sop_classifier.classifier."),
    ("mlm_head.transform.", "predictions.dense."),
    ("mlm_head.norm.", "predictions.LayerNorm."),
    ("mlm_head.decoder.weight", "predictions.decoder.weight"),
    ("mlm_head.decoder.bias", "predictions.bias"),
]
# HF stores the MLM decoder bias twice (predictions.bias is tied to predictions.decoder.bias).
_HF_DECODER_BIAS_ALIAS = "predictions.decoder.bias"
_HF_HEADS = ("albert.", "predictions.", "sop_classifier.", "classifier.")
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

_TO_HF = [(_template_regex(ours), theirs) for ours, theirs in _HF_ALBERT_NAMES]
_FROM_HF = [(_template_regex(theirs), ours) for ours, theirs in _HF_ALBERT_NAMES]


def to_hf_albert_config(cfg: ModelConfig) -> dict[str, Any]:
    """HF ``AlbertConfig`` keyword arguments (and config.json keys) describing the same model."""
    if cfg.arch != "albert":
        raise ConfigError(f"to_hf_albert_config needs arch='albert', got {cfg.arch!r}")
    if cfg.gated_ffn or not cfg.bias or cfg.position != "learned" or cfg.norm_type != "layernorm":
        raise ConfigError("HF ALBERT has an ungated, biased FFN, learned positions and LayerNorm")
    return {
        "model_type": "albert",
        "vocab_size": cfg.vocab_size,
        "embedding_size": embedding_width(cfg),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_hidden_groups": 1 if cfg.share_layers else cfg.num_layers,
        "inner_group_num": 1,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": _HF_ACTIVATIONS[cfg.activation],
        "max_position_embeddings": cfg.max_position,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "classifier_dropout_prob": cfg.dropout,
        "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "pad_token_id": cfg.pad_token_id,
    }


def to_hf_albert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the keys of HF ``AlbertForMaskedLM`` / ``AlbertForPreTraining`` /
    ``AlbertForSequenceClassification`` (the body under ``albert.``)."""
    out = {_rename(name, _TO_HF): t for name, t in state.items()}
    if "predictions.bias" in out:
        out[_HF_DECODER_BIAS_ALIAS] = out["predictions.bias"]
        out.setdefault("predictions.decoder.weight", out["albert.embeddings.word_embeddings.weight"])
    return out


def from_hf_albert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ALBERT keys (with or without the ``albert.`` prefix) -> ours, loadable with
    ``load_state_dict``. A layer group of more than one layer has no counterpart: an error."""
    out = {}
    for name, t in state.items():
        if name == _HF_DECODER_BIAS_ALIAS:
            continue
        if not name.startswith(_HF_HEADS):
            name = "albert." + name  # a bare HF AlbertModel
        out[_rename(name, _FROM_HF)] = t
    return out
