"""Model directories on disk: ``model.safetensors`` + ``config.json``, and the HF BERT key mapping.

Weights are only ever read with safetensors (no pickle, so a downloaded directory cannot run code);
``config.json`` is ``{"model": asdict(ModelConfig), **extra}`` as docs/contracts.md specifies.
Tied weights (the MLM decoder shares the word embeddings) are stored once, under the first name
``state_dict`` gives them, and filled back in from the module's own tying on load.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError, InputError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _storage_key(t: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """Equal for tied names: they are views of one parameter."""
    return t.data_ptr(), tuple(t.shape)


def save_model(
    model: nn.Module, cfg: ModelConfig, out_dir: Path, extra: dict[str, Any] | None = None
) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        if _storage_key(t) in seen:  # a tied alias; safetensors refuses shared storage
            continue
        seen.add(_storage_key(t))
        tensors[name] = t.detach().cpu().contiguous()
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    (out_dir / CONFIG).write_text(json.dumps({"model": asdict(cfg), **(extra or {})}, indent=2))


def load_config(model_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """``(ModelConfig, the other keys of config.json)`` of a model directory."""
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise InputError(path, "missing; not a model directory")
    doc = json.loads(path.read_text())
    try:
        cfg = ModelConfig(**doc.pop("model"))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: 'model' is not a ModelConfig: {e}") from e
    return cfg, doc


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` on CPU, tied aliases not repeated."""
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise InputError(path, "missing; not a model directory")
    return load_file(str(path), device="cpu")


def _check_compatible(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: Path, may_miss: set[str]
) -> None:
    missing = sorted(set(expected) - set(given) - may_miss)
    unexpected = sorted(set(given) - set(expected))
    if missing:
        raise ConfigError(f"{source}: missing tensor(s) {missing[:5]} ({len(missing)} in all)")
    if unexpected:
        raise ConfigError(f"{source}: unexpected tensor(s) {unexpected[:5]} ({len(unexpected)} in all)")
    for name, t in given.items():
        if t.shape != expected[name].shape:
            raise ConfigError(
                f"{source}: tensor {name} has shape {tuple(t.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )


def load_weights(model: nn.Module, model_dir: Path) -> None:
    """Load a whole model saved by ``save_model`` (same architecture and sizes) in place."""
    model = getattr(model, "module", model)
    given = load_state_dict(model_dir)
    expected = model.state_dict()
    # Names whose storage another expected name shares: save_model stored only one of them.
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, t in expected.items():
        by_storage.setdefault(_storage_key(t), []).append(name)
    tied = {
        name
        for names in by_storage.values()
        if len(names) > 1 and any(n in given for n in names)
        for name in names
    }
    _check_compatible(expected, given, Path(model_dir) / WEIGHTS, may_miss=tied)
    model.load_state_dict(given, strict=False)


def load_encoder_into(model: nn.Module, pretrained_dir: Path) -> None:
    """Copy every ``encoder.*`` tensor of a pretrained directory into ``model.encoder``.

    Heads stay as initialised, which is what fine-tuning from a pretrained body wants; any
    mismatch in the body (other sizes, other vocabulary) is an error naming the tensor.
    """
    source = Path(pretrained_dir) / WEIGHTS
    given = {
        name.removeprefix("encoder."): t
        for name, t in load_state_dict(pretrained_dir).items()
        if name.startswith("encoder.")
    }
    if not given:
        raise ConfigError(f"{source}: no encoder.* tensors; not a pretrained encoder")
    _check_compatible(model.encoder.state_dict(), given, source, may_miss=set())
    model.encoder.load_state_dict(given)


# Our names -> HF transformers BERT names; "{i}" is a layer index. Prefix templates end with ".".
_HF_BERT_NAMES: list[tuple[str, str]] = [
    ("encoder.embeddings.word.", "bert.embeddings.word_embeddings."),
    ("encoder.embeddings.position.", "bert.embeddings.position_embeddings."),
    ("encoder.embeddings.token_type.", "bert.embeddings.token_type_embeddings."),
    ("encoder.embeddings.norm.", "bert.embeddings.LayerNorm."),
    ("encoder.layers.{i}.attn.query.", "bert.encoder.layer.{i}.attention.self.query."),
    ("encoder.layers.{i}.attn.key.", "bert.encoder.layer.{i}.attention.self.key."),
    ("encoder.layers.{i}.attn.value.", "bert.encoder.layer.{i}.attention.self.value."),
    ("encoder.layers.{i}.attn.out.", "bert.encoder.layer.{i}.attention.output.dense."),
    ("encoder.layers.{i}.attn_norm.", "bert.encoder.layer.{i}.attention.output.LayerNorm."),
    ("encoder.layers.{i}.ffn.up.", "bert.encoder.layer.{i}.intermediate.dense."),
    ("encoder.layers.{i}.ffn.down.", "bert.encoder.layer.{i}.output.dense."),
    ("encoder.layers.{i}.ffn_norm.", "bert.encoder.layer.{i}.output.LayerNorm."),
    ("pooler.dense.", "bert.pooler.dense."),
    ("classifier.", "classifier."),
    ("mlm_head.transform.", "cls.predictions.transform.dense."),
    ("mlm_head.norm.", "cls.predictions.transform.LayerNorm."),
    ("mlm_head.decoder.weight", "cls.predictions.decoder.weight"),
    ("mlm_head.decoder.bias", "cls.predictions.bias"),
]
# HF stores the MLM decoder bias twice (cls.predictions.bias is tied to decoder.bias).
_HF_DECODER_BIAS_ALIAS = "cls.predictions.decoder.bias"
# In HF checkpoints but not in our models: the next-sentence head of BertForPreTraining (original
# BERT releases), and the position-id buffer older transformers versions saved.
_HF_NOT_OURS = ("cls.seq_relationship.", "bert.embeddings.position_ids", "embeddings.position_ids")


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + r"(\d+)".join(re.escape(part) for part in template.split("{i}")))


_TO_HF = [(_template_regex(ours), theirs) for ours, theirs in _HF_BERT_NAMES]
_FROM_HF = [(_template_regex(theirs), ours) for ours, theirs in _HF_BERT_NAMES]


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            renamed = target.replace("{i}", m.group(1)) if m.groups() else target
            return renamed + name[m.end() :]
    raise ConfigError(f"no BERT name mapping for tensor {name!r}")


def to_hf_bert_config(cfg: ModelConfig) -> dict[str, Any]:
    """HF ``BertConfig`` keyword arguments (and config.json keys) describing the same model."""
    return {
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "max_position_embeddings": cfg.max_position,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "layer_norm_eps": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "pad_token_id": cfg.pad_token_id,
    }


def to_hf_bert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the keys of HF ``BertForMaskedLM`` / ``BertForSequenceClassification``.

    The body gets the ``bert.`` prefix those classes use (HF ``BertModel`` wants it stripped).
    """
    out = {_rename(name, _TO_HF): t for name, t in state.items()}
    if "cls.predictions.bias" in out:
        out[_HF_DECODER_BIAS_ALIAS] = out["cls.predictions.bias"]
        out.setdefault("cls.predictions.decoder.weight", out["bert.embeddings.word_embeddings.weight"])
    return out


def from_hf_bert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF BERT keys (with or without the ``bert.`` prefix) -> ours, loadable with ``load_state_dict``.

    Tensors with no counterpart here (the NSP head, buffers) are dropped; any other unknown name
    is an error.
    """
    out = {}
    for name, t in state.items():
        if name == _HF_DECODER_BIAS_ALIAS or name.startswith(_HF_NOT_OURS):
            continue
        if not name.startswith(("bert.", "cls.", "classifier.")):
            name = "bert." + name  # a bare HF BertModel
        out[_rename(name, _FROM_HF)] = t
    return out
