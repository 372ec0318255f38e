"""GPT-2 in HF transformers' format: export our ``GPTForCausalLM`` to a directory that
``GPT2LMHeadModel.from_pretrained`` reads, and import HF GPT-2 weights into ours.

Two layout differences are bridged here, everything else is renaming:

- GPT-2's linear layers are ``Conv1D`` modules whose weight is stored [in, out], the transpose of
  ``nn.Linear``'s [out, in];
- its query, key and value projections are one fused ``c_attn`` ([H, 3H], q | k | v along the
  output axis); ours are three separate layers (the BERT layout every family shares).

The directory holds ``config.json`` (a GPT2Config) and ``model.safetensors``; tied output
embeddings are stored once, as HF does. transformers is not imported: the files are the contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.models.decoder import GPTForCausalLM
from plm_core.models.io import CONFIG, WEIGHTS, load_state_dict

_ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_ACTIVATION_FROM_HF = {
    **{hf: ours for ours, hf in _ACTIVATION_TO_HF.items()},
    "gelu_pytorch_tanh": "gelu_tanh",
    "swish": "silu",
}
# What a ModelConfig must say to be a GPT-2 (the switches GPT2Config cannot express).
_GPT2_SWITCHES: dict[str, Any] = {
    "family": "decoder",
    "position": "learned",
    "norm": "pre",
    "norm_type": "layernorm",
    "gated_ffn": False,
    "bias": True,
}
# GPT2Config defaults: save_pretrained writes only the values that differ from them.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "pad_token_id": None,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}
# Buffers older GPT-2 checkpoints saved (the causal mask); they hold no weights.
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")


def check_gpt2_compatible(cfg: ModelConfig) -> None:
    """Raise ``ConfigError`` naming every switch that GPT-2 cannot represent."""
    wrong = [
        f"{k}={getattr(cfg, k)!r} (GPT-2: {v!r})" for k, v in _GPT2_SWITCHES.items() if getattr(cfg, k) != v
    ]
    if cfg.activation not in _ACTIVATION_TO_HF:
        wrong.append(f"activation={cfg.activation!r}")
    if wrong:
        raise ConfigError("not a GPT-2 architecture: " + ", ".join(wrong))


def to_hf_gpt2_config(
    cfg: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """``config.json`` of HF ``GPT2LMHeadModel`` (also ``GPT2Config`` keyword arguments).

    ``bos_token_id``/``eos_token_id`` are the tokenizer's (GPT2Config's default, 50256, is the
    OpenAI vocabulary's) and are written only when given.
    """
    check_gpt2_compatible(cfg)
    out: dict[str, Any] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_position,
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size,
        "activation_function": _ACTIVATION_TO_HF[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attention_dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "pad_token_id": cfg.pad_token_id,
    }
    if bos_token_id is not None:
        out["bos_token_id"] = bos_token_id
    if eos_token_id is not None:
        out["eos_token_id"] = eos_token_id
    return out


def from_hf_gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    """Our ``ModelConfig`` for an HF GPT-2 ``config.json`` (missing keys take GPT2Config defaults)."""
    c = {**_HF_DEFAULTS, **hf}
    if c.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"model_type {c['model_type']!r} is not gpt2")
    unsupported = {
        "scale_attn_weights": False,
        "scale_attn_by_inverse_layer_idx": True,
        "add_cross_attention": True,
    }
    for key, bad in unsupported.items():
        if c[key] == bad:
            raise ConfigError(f"GPT-2 with {key}={bad} is not supported")
    if c["activation_function"] not in _ACTIVATION_FROM_HF:
        raise ConfigError(f"GPT-2 activation_function {c['activation_function']!r} is not supported")
    return ModelConfig(
        family="decoder",
        arch="gpt2",
        vocab_size=c["vocab_size"],
        hidden_size=c["n_embd"],
        num_layers=c["n_layer"],
        num_heads=c["n_head"],
        intermediate_size=c["n_inner"] or 4 * c["n_embd"],
        max_position=c["n_positions"],
        type_vocab_size=0,
        **{k: v for k, v in _GPT2_SWITCHES.items() if k != "family"},
        activation=_ACTIVATION_FROM_HF[c["activation_function"]],
        tie_word_embeddings=c["tie_word_embeddings"],
        dropout=c["resid_pdrop"],
        attention_dropout=c["attn_pdrop"],
        layer_norm_eps=c["layer_norm_epsilon"],
        initializer_range=c["initializer_range"],
        pad_token_id=c["pad_token_id"] if c["pad_token_id"] is not None else 0,
    )


def _conv1d(linear_weight: torch.Tensor) -> torch.Tensor:
    """nn.Linear [out, in] <-> Conv1D [in, out] (the transpose is its own inverse)."""
    return linear_weight.t().contiguous()


def to_hf_gpt2_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our ``GPTForCausalLM`` state dict -> ``GPT2LMHeadModel``'s (``lm_head.weight`` only when untied)."""
    check_gpt2_compatible(cfg)
    out = {
        "transformer.wte.weight": state["encoder.embeddings.word.weight"],
        "transformer.wpe.weight": state["encoder.embeddings.position.weight"],
        "transformer.ln_f.weight": state["encoder.final_norm.weight"],
        "transformer.ln_f.bias": state["encoder.final_norm.bias"],
    }
    for i in range(cfg.num_layers):
        ours, hf = f"encoder.layers.{i}.", f"transformer.h.{i}."
        for part in ("weight", "bias"):
            out[hf + f"ln_1.{part}"] = state[ours + f"attn_norm.{part}"]
            out[hf + f"ln_2.{part}"] = state[ours + f"ffn_norm.{part}"]
        qkv_weight = torch.cat([state[ours + f"attn.{n}.weight"] for n in ("query", "key", "value")])
        out[hf + "attn.c_attn.weight"] = _conv1d(qkv_weight)  # [H, 3H]
        out[hf + "attn.c_attn.bias"] = torch.cat(
            [state[ours + f"attn.{n}.bias"] for n in ("query", "key", "value")]
        )
        for ours_name, hf_name in (
            ("attn.out", "attn.c_proj"),
            ("ffn.up", "mlp.c_fc"),
            ("ffn.down", "mlp.c_proj"),
        ):
            out[hf + f"{hf_name}.weight"] = _conv1d(state[ours + f"{ours_name}.weight"])
            out[hf + f"{hf_name}.bias"] = state[ours + f"{ours_name}.bias"]
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def from_hf_gpt2_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 weights (``GPT2LMHeadModel``, or a bare ``GPT2Model`` without the ``transformer.``
    prefix, as the original OpenAI checkpoints are) -> ours, loadable with ``load_state_dict``.

    Mask buffers of older checkpoints are dropped; any other tensor left over is an error.
    """
    hf = {
        (k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
        for k, v in hf_state.items()
        if not k.endswith(_HF_BUFFERS)
    }
    H = cfg.hidden_size
    out = {
        "encoder.embeddings.word.weight": hf.pop("transformer.wte.weight"),
        "encoder.embeddings.position.weight": hf.pop("transformer.wpe.weight"),
        "encoder.final_norm.weight": hf.pop("transformer.ln_f.weight"),
        "encoder.final_norm.bias": hf.pop("transformer.ln_f.bias"),
    }
    for i in range(cfg.num_layers):
        ours, p = f"encoder.layers.{i}.", f"transformer.h.{i}."
        for part in ("weight", "bias"):
            out[ours + f"attn_norm.{part}"] = hf.pop(p + f"ln_1.{part}")
            out[ours + f"ffn_norm.{part}"] = hf.pop(p + f"ln_2.{part}")
        q, k, v = _conv1d(hf.pop(p + "attn.c_attn.weight")).split(H)  # 3 x [H, H]
        qb, kb, vb = hf.pop(p + "attn.c_attn.bias").split(H)  # 3 x [H]
        for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[ours + f"attn.{name}.weight"] = w.contiguous()
            out[ours + f"attn.{name}.bias"] = b
        for ours_name, hf_name in (
            ("attn.out", "attn.c_proj"),
            ("ffn.up", "mlp.c_fc"),
            ("ffn.down", "mlp.c_proj"),
        ):
            out[ours + f"{ours_name}.weight"] = _conv1d(hf.pop(p + f"{hf_name}.weight"))
            out[ours + f"{ours_name}.bias"] = hf.pop(p + f"{hf_name}.bias")
    lm_head = hf.pop("lm_head.weight", None)
    if cfg.tie_word_embeddings:
        out["lm_head.weight"] = out["encoder.embeddings.word.weight"]  # the same parameter in our model
    elif lm_head is None:
        raise ConfigError("tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    else:
        out["lm_head.weight"] = lm_head
    if hf:
        raise ConfigError(f"tensors with no GPT-2 counterpart: {sorted(hf)[:5]} ({len(hf)} in all)")
    return out


def export_gpt2(
    model: GPTForCausalLM, out_dir: Path, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> None:
    """Write ``config.json`` + ``model.safetensors`` that ``GPT2LMHeadModel.from_pretrained(out_dir)`` loads."""
    model = getattr(model, "module", model)  # unwrap DDP
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors = {k: v.contiguous() for k, v in to_hf_gpt2_state_dict(state, model.cfg).items()}
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    hf_config = to_hf_gpt2_config(model.cfg, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    (out_dir / CONFIG).write_text(json.dumps(hf_config, indent=2))


def import_gpt2(model_dir: Path) -> GPTForCausalLM:
    """Build our ``GPTForCausalLM`` from an HF GPT-2 directory (``config.json`` + ``model.safetensors``);
    its ``ModelConfig`` is ``model.cfg``."""
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise InputError(path, "missing; not an HF model directory")
    cfg = from_hf_gpt2_config(json.loads(path.read_text()))
    model = GPTForCausalLM(cfg)
    model.load_state_dict(from_hf_gpt2_state_dict(load_state_dict(model_dir), cfg))
    return model
