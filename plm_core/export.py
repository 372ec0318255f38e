"""A model directory in HF transformers format: what maps, exported; what does not, said so.

The registry logs the result as the ``hf`` artifact next to the pyfunc, so a user can pick the
weights up with ``transformers`` without this repository. The key mappings are the ones the
parity tests check (``models/io.py`` BERT, ``hf_bert.py`` ALBERT, ``hf_gpt2.py`` GPT-2,
``hf_seq2seq.py`` T5/BART). Task heads map only where transformers has the same head:
BERT/ALBERT sequence classification (pooler + linear) maps whole; any other head (token
classification and QA heads, the GPT last-token classifier) is left out and the body is exported
alone as the base model class. ``export_hf`` writes ``config.json`` + ``model.safetensors`` and
returns a summary whose ``note`` says what was left out.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.io import load_config, load_state_dict, to_hf_bert_config, to_hf_bert_state_dict

HF_EXPORT_FILE = "plm_export.json"


def _bert_compatible(cfg: ModelConfig) -> None:
    wrong = {
        k: getattr(cfg, k)
        for k, v in dict(
            position="learned",
            norm="post",
            norm_type="layernorm",
            gated_ffn=False,
            bias=True,
            activation="gelu",
        ).items()
        if getattr(cfg, k) != v
    }
    if wrong:
        raise ConfigError(f"not a BERT architecture: {wrong}")


def _split_body(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    body = {k: v for k, v in state.items() if k.startswith("encoder.")}
    return body, sorted(set(state) - set(body))


def _encoder(
    cfg: ModelConfig, extra: dict[str, Any], state: dict[str, torch.Tensor]
) -> tuple[dict, dict, str]:
    task = extra.get("task")
    labels = list(extra.get("labels") or [])
    if cfg.arch == "albert":
        from plm_core.models.hf_bert import to_hf_albert_config, to_hf_albert_state_dict

        to_config, to_state, prefix = to_hf_albert_config, to_hf_albert_state_dict, "Albert"
    else:
        _bert_compatible(cfg)
        to_config, to_state, prefix = to_hf_bert_config, to_hf_bert_state_dict, "Bert"
    config = to_config(cfg)
    if task == "classification" and any(k.startswith("classifier.") for k in state):
        config.update(
            architectures=[f"{prefix}ForSequenceClassification"],
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
        return config, to_state(state), "whole model (body, pooler and classification head)"
    body, dropped = _split_body(state)
    config["architectures"] = [f"{prefix}Model"]
    note = "body only" + (f"; head tensors not exported: {dropped}" if dropped else "")
    return config, to_state(body), note


def _decoder(
    cfg: ModelConfig, extra: dict[str, Any], state: dict[str, torch.Tensor]
) -> tuple[dict, dict, str]:
    from plm_core.models.hf_gpt2 import to_hf_gpt2_config, to_hf_gpt2_state_dict

    if (
        "lm_head.weight" in state
        or cfg.tie_word_embeddings
        and not any(k.startswith("classifier.") for k in state)
    ):
        return to_hf_gpt2_config(cfg), to_hf_gpt2_state_dict(state, cfg), "whole model (GPT2LMHeadModel)"
    body, dropped = _split_body(state)
    tied = replace(cfg, tie_word_embeddings=True)  # no lm_head to export: the body alone
    config = {**to_hf_gpt2_config(tied), "architectures": ["GPT2Model"]}
    return config, to_hf_gpt2_state_dict(body, tied), f"body only (GPT2Model); not exported: {dropped}"


def _seq2seq(
    cfg: ModelConfig, extra: dict[str, Any], state: dict[str, torch.Tensor]
) -> tuple[dict, dict, str]:
    from plm_core.models.hf_seq2seq import to_hf_config, to_hf_state_dict

    if extra.get("task") in ("classification", "ner", "qa"):
        raise ConfigError("a seq2seq task model keeps only the encoder stack, which no HF class here maps")
    return to_hf_config(cfg), to_hf_state_dict(state, cfg), "whole model (conditional generation)"


def export_hf(model_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir/{config.json, model.safetensors, plm_export.json}``; raise ``ConfigError``
    when nothing maps (the caller logs the reason instead of an artifact)."""
    cfg, extra = load_config(Path(model_dir))
    state = load_state_dict(Path(model_dir))
    build = {"encoder": _encoder, "decoder": _decoder, "seq2seq": _seq2seq}[cfg.family]
    config, tensors, note = build(cfg, extra, state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), {"format": "pt"}
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    summary = {
        "architectures": config.get("architectures"),
        "family": cfg.family,
        "arch": cfg.arch,
        "note": note,
    }
    (out / HF_EXPORT_FILE).write_text(json.dumps(summary, indent=2))
    return summary
