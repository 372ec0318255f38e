"""Seq2seq models in HF transformers' format: ``T5ForConditionalGeneration`` and
``BartForConditionalGeneration`` directories (``config.json`` + ``model.safetensors``).

Export writes what ``from_pretrained`` reads; import reads what ``save_pretrained`` writes (one
unsharded safetensors file). Both are renamings, except BART's position table, which HF offsets
by two rows (a fairseq legacy; the first two rows are never read), so export prepends two zero
rows and import drops them; and the shared embedding, which export also writes as the stacks'
``embed_tokens`` (transformers 5 ties those only under ``tie_word_embeddings``). transformers
itself is not imported: the mapping is data, and the parity tests check it against the real
classes.

Only configurations HF can express are exported (T5: relative positions, pre-LN RMSNorm, no
biases; BART: learned positions, post-LN LayerNorm with eps 1e-5, biases, no gated feed-forward);
anything else is a ``ConfigError`` naming the field, never a silently different model.

Token ids are not carried over: ``ModelConfig`` has no decoder-start or EOS field, and our models
take them from docs/contracts.md (T5 starts decoding from [PAD], BART from </s>). Exported
configs state those ids; an imported model uses ours (import exists for parity checks and for
weights trained with this project's tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.models.seq2seq import EOS_ID, Seq2SeqForConditionalGeneration
from plm_core.tokenizer import SPECIAL_TOKENS

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
BART_POSITION_OFFSET = 2  # rows HF's BartLearnedPositionalEmbedding skips
BART_LAYER_NORM_EPS = 1e-5  # HF BART's nn.LayerNorm default; not configurable there

# Our activation names -> HF ACT2FN names, and back (HF has several names for the same function).
_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
_FROM_HF_ACT = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# The config class defaults: HF writes only the keys that differ from them.
_T5_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=None,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    pad_token_id=0,
)
_BART_DEFAULTS: dict[str, Any] = dict(
    vocab_size=50265,
    max_position_embeddings=1024,
    encoder_layers=12,
    encoder_ffn_dim=4096,
    encoder_attention_heads=16,
    decoder_layers=12,
    decoder_ffn_dim=4096,
    decoder_attention_heads=16,
    activation_function="gelu",
    d_model=1024,
    dropout=0.1,
    attention_dropout=0.0,
    init_std=0.02,
    scale_embedding=False,
    tie_word_embeddings=True,
    pad_token_id=1,
)
_T5_PROJECTIONS = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
_BART_PROJECTIONS = (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj"))


def _require(cfg: ModelConfig, **expected: Any) -> None:
    for name, value in expected.items():
        if getattr(cfg, name) != value:
            raise ConfigError(
                f"HF {cfg.arch.upper()} needs {name}={value!r}; this model has {getattr(cfg, name)!r}"
            )


def _t5_feed_forward_proj(cfg: ModelConfig) -> str:
    act = _TO_HF_ACT[cfg.activation]
    if not cfg.gated_ffn:
        return act
    # HF reads "gated-gelu" as T5 v1.1's tanh GELU, so the exact GELU goes by its other name.
    return "gated-" + {"gelu": "gelu_python", "gelu_new": "gelu"}.get(act, act)


def _t5_activation(feed_forward_proj: str) -> tuple[str, bool]:
    """HF ``feed_forward_proj`` -> (our activation, gated_ffn)."""
    if feed_forward_proj == "gated-gelu":
        return "gelu_tanh", True
    gated = feed_forward_proj.startswith("gated-")
    name = feed_forward_proj.removeprefix("gated-")
    if name not in _FROM_HF_ACT:
        raise ConfigError(f"HF activation {name!r} has no counterpart; known: {sorted(_FROM_HF_ACT)}")
    return _FROM_HF_ACT[name], gated


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """``config.json`` of the HF model equivalent to ``cfg`` (``T5Config`` / ``BartConfig`` keys)."""
    num_decoder_layers = cfg.num_decoder_layers or cfg.num_layers
    if cfg.arch == "t5":
        _require(cfg, position="relative", norm="pre", norm_type="rmsnorm", bias=False)
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": cfg.vocab_size,
            "d_model": cfg.hidden_size,
            "d_kv": cfg.hidden_size // cfg.num_heads,
            "d_ff": cfg.intermediate_size,
            "num_layers": cfg.num_layers,
            "num_decoder_layers": num_decoder_layers,
            "num_heads": cfg.num_heads,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "feed_forward_proj": _t5_feed_forward_proj(cfg),
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "is_encoder_decoder": True,
            "pad_token_id": cfg.pad_token_id,
            "eos_token_id": EOS_ID,
            "decoder_start_token_id": cfg.pad_token_id,
        }
    _require(
        cfg,
        position="learned",
        norm="post",
        norm_type="layernorm",
        bias=True,
        gated_ffn=False,
        layer_norm_eps=BART_LAYER_NORM_EPS,
    )
    return {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.hidden_size,
        "encoder_layers": cfg.num_layers,
        "decoder_layers": num_decoder_layers,
        "encoder_attention_heads": cfg.num_heads,
        "decoder_attention_heads": cfg.num_heads,
        "encoder_ffn_dim": cfg.intermediate_size,
        "decoder_ffn_dim": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position,
        "activation_function": _TO_HF_ACT[cfg.activation],
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": 0.0,  # our feed-forward has dropout on its output only
        "init_std": cfg.initializer_range,
        "scale_embedding": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "is_encoder_decoder": True,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": SPECIAL_TOKENS["bos"][1],
        "eos_token_id": EOS_ID,
        "decoder_start_token_id": EOS_ID,
        "forced_eos_token_id": EOS_ID,
    }


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` for the model an HF T5 / BART ``config.json`` describes."""
    model_type = hf.get("model_type")
    if model_type == "t5":
        hf = {**_T5_DEFAULTS, **hf}
        if hf["d_kv"] * hf["num_heads"] != hf["d_model"]:
            raise ConfigError(
                f"HF T5 with d_kv {hf['d_kv']} x num_heads {hf['num_heads']} != d_model {hf['d_model']} "
                f"has no counterpart: our attention keeps hidden_size = heads x head size"
            )
        activation, gated = _t5_activation(hf["feed_forward_proj"])
        # Our T5 rescales the decoder output exactly when the head is tied, so HF's scaling flag
        # decides: transformers 5 writes it as scale_decoder_outputs (and always ties, unless a
        # checkpoint holds a separate lm_head); older configs say tie_word_embeddings=False for
        # T5 v1.1's unscaled, untied head.
        scaled = hf.get("scale_decoder_outputs", hf["tie_word_embeddings"])
        return ModelConfig(
            family="seq2seq",
            arch="t5",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["d_model"],
            num_layers=hf["num_layers"],
            num_decoder_layers=hf["num_decoder_layers"] or hf["num_layers"],
            num_heads=hf["num_heads"],
            intermediate_size=hf["d_ff"],
            type_vocab_size=0,
            position="relative",
            norm="pre",
            norm_type="rmsnorm",
            activation=activation,
            gated_ffn=gated,
            bias=False,
            tie_word_embeddings=scaled,
            relative_attention_num_buckets=hf["relative_attention_num_buckets"],
            relative_attention_max_distance=hf["relative_attention_max_distance"],
            dropout=hf["dropout_rate"],
            attention_dropout=hf["dropout_rate"],
            layer_norm_eps=hf["layer_norm_epsilon"],
            pad_token_id=hf["pad_token_id"],
        )
    if model_type == "bart":
        hf = {**_BART_DEFAULTS, **hf}
        for ours, enc, dec in (
            ("num_heads", "encoder_attention_heads", "decoder_attention_heads"),
            ("intermediate_size", "encoder_ffn_dim", "decoder_ffn_dim"),
        ):
            if hf[enc] != hf[dec]:
                raise ConfigError(f"HF BART with {enc} {hf[enc]} != {dec} {hf[dec]}: one {ours} serves both")
        if hf["scale_embedding"]:
            raise ConfigError("HF BART with scale_embedding=True has no counterpart here")
        if hf["activation_function"] not in _FROM_HF_ACT:
            raise ConfigError(f"HF activation {hf['activation_function']!r} has no counterpart")
        return ModelConfig(
            family="seq2seq",
            arch="bart",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["d_model"],
            num_layers=hf["encoder_layers"],
            num_decoder_layers=hf["decoder_layers"],
            num_heads=hf["encoder_attention_heads"],
            intermediate_size=hf["encoder_ffn_dim"],
            max_position=hf["max_position_embeddings"],
            type_vocab_size=0,
            position="learned",
            norm="post",
            norm_type="layernorm",
            activation=_FROM_HF_ACT[hf["activation_function"]],
            bias=True,
            tie_word_embeddings=hf["tie_word_embeddings"],
            dropout=hf["dropout"],
            attention_dropout=hf["attention_dropout"],
            layer_norm_eps=BART_LAYER_NORM_EPS,
            initializer_range=hf["init_std"],
            pad_token_id=hf["pad_token_id"],
        )
    raise ConfigError(f"HF model_type {model_type!r} is not a seq2seq model here; expected 't5' or 'bart'")


def _module_names(cfg: ModelConfig) -> dict[str, str]:
    """Our module path -> HF's, for every module that owns tensors (suffixes ``.weight`` /
    ``.bias`` are the same on both sides). Aliases of the shared embedding are not listed."""
    sides = (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers or cfg.num_layers))
    names: dict[str, str] = {} if cfg.tie_word_embeddings else {"lm_head": "lm_head"}
    if cfg.arch == "t5":
        names["encoder.embeddings.word"] = "shared"
        up = "wi_1" if cfg.gated_ffn else "wi"  # gated: wi_0 is the activated half
        for side, num_layers in sides:
            names[f"{side}.relative_bias.embed"] = (
                f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias"
            )
            names[f"{side}.final_norm"] = f"{side}.final_layer_norm"
            ffn = 2 if side == "decoder" else 1  # sublayer index of the feed-forward
            for i in range(num_layers):
                ours, theirs = f"{side}.layers.{i}", f"{side}.block.{i}.layer"
                for a, b in _T5_PROJECTIONS:
                    names[f"{ours}.attn.{a}"] = f"{theirs}.0.SelfAttention.{b}"
                    if side == "decoder":
                        names[f"{ours}.cross_attn.{a}"] = f"{theirs}.1.EncDecAttention.{b}"
                names[f"{ours}.attn_norm"] = f"{theirs}.0.layer_norm"
                if side == "decoder":
                    names[f"{ours}.cross_attn_norm"] = f"{theirs}.1.layer_norm"
                names[f"{ours}.ffn.up"] = f"{theirs}.{ffn}.DenseReluDense.{up}"
                if cfg.gated_ffn:
                    names[f"{ours}.ffn.gate"] = f"{theirs}.{ffn}.DenseReluDense.wi_0"
                names[f"{ours}.ffn.down"] = f"{theirs}.{ffn}.DenseReluDense.wo"
                names[f"{ours}.ffn_norm"] = f"{theirs}.{ffn}.layer_norm"
        return names
    names["encoder.embeddings.word"] = "model.shared"
    for side, num_layers in sides:
        names[f"{side}.embeddings.position"] = f"model.{side}.embed_positions"
        names[f"{side}.embeddings.norm"] = f"model.{side}.layernorm_embedding"
        for i in range(num_layers):
            ours, theirs = f"{side}.layers.{i}", f"model.{side}.layers.{i}"
            for a, b in _BART_PROJECTIONS:
                names[f"{ours}.attn.{a}"] = f"{theirs}.self_attn.{b}"
                names[f"{ours}.cross_attn.{a}"] = f"{theirs}.encoder_attn.{b}"
            names[f"{ours}.attn_norm"] = f"{theirs}.self_attn_layer_norm"
            names[f"{ours}.cross_attn_norm"] = f"{theirs}.encoder_attn_layer_norm"
            names[f"{ours}.ffn.up"] = f"{theirs}.fc1"
            names[f"{ours}.ffn.down"] = f"{theirs}.fc2"
            names[f"{ours}.ffn_norm"] = f"{theirs}.final_layer_norm"
    return names


def _our_aliases(cfg: ModelConfig) -> set[str]:
    """Our state-dict names that are views of the shared token embedding."""
    return {"decoder.embeddings.word.weight"} | ({"lm_head.weight"} if cfg.tie_word_embeddings else set())


def _hf_aliases(cfg: ModelConfig) -> set[str]:
    """HF names that are (tied) copies of its shared embedding, which checkpoints may or may not hold."""
    prefix = "" if cfg.arch == "t5" else "model."
    aliases = {f"{prefix}encoder.embed_tokens.weight", f"{prefix}decoder.embed_tokens.weight"}
    return aliases | ({"lm_head.weight"} if cfg.tie_word_embeddings else set())


def _is_bart_positions(cfg: ModelConfig, module: str) -> bool:
    return cfg.arch == "bart" and module.endswith(".embeddings.position")


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our ``Seq2SeqForConditionalGeneration`` state dict -> HF's names.

    The encoder's and decoder's ``embed_tokens`` are written as copies of the shared embedding:
    transformers 5 ties them to it only under ``tie_word_embeddings``, so an untied model would
    otherwise load them as random weights.
    """
    names, aliases = _module_names(cfg), _our_aliases(cfg)
    out = {}
    for key, t in state.items():
        if key in aliases:
            continue
        module, param = key.rsplit(".", 1)
        if module not in names:
            raise ConfigError(f"no HF {cfg.arch} name for tensor {key!r}")
        if _is_bart_positions(cfg, module):
            t = F.pad(t, (0, 0, BART_POSITION_OFFSET, 0))  # [P + 2, H]: HF reads rows from 2 on
        out[f"{names[module]}.{param}"] = t
    word = out[names["encoder.embeddings.word"] + ".weight"]
    for alias in _hf_aliases(cfg) - {"lm_head.weight"}:
        out[alias] = word.clone()  # safetensors stores no two names for one storage
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF T5 / BART tensors -> our names, loadable into ``Seq2SeqForConditionalGeneration(cfg)``.

    Copies of the shared embedding (``embed_tokens``, a tied ``lm_head``) must equal it and are
    dropped, or stand in for it where the checkpoint lacks ``shared``; so are tensors HF ignores: BART's all-zero ``final_logits_bias`` and the
    cross-attention relative bias old T5 checkpoints carry. Any other unknown name is an error.
    An untied config without an ``lm_head`` tensor (HF T5 tied but unscaled) gets a copy of the
    shared embedding as its head: the same logits, though training then moves the two apart.
    """
    inverse = {theirs: ours for ours, theirs in _module_names(cfg).items()}
    hf_aliases = _hf_aliases(cfg)
    word = "encoder.embeddings.word.weight"
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        module, _, param = key.rpartition(".")
        if module in inverse:
            if _is_bart_positions(cfg, inverse[module]):
                t = t[BART_POSITION_OFFSET:]  # [P, H]
            out[f"{inverse[module]}.{param}"] = t
        elif key in hf_aliases:
            out.setdefault(word, t)  # the shared tensor, where present, overwrites this below
        elif key == "final_logits_bias":
            if t.any():
                raise ConfigError("HF BART final_logits_bias is not zero; this model has no logits bias")
        elif key != "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
            raise ConfigError(f"HF {cfg.arch} tensor {key!r} has no counterpart here")
    shared = "shared.weight" if cfg.arch == "t5" else "model.shared.weight"
    if shared in state:
        out[word] = state[shared]
    for key in hf_aliases & state.keys():
        if not torch.equal(state[key], out[word]):
            raise ConfigError(f"HF tensor {key!r} differs from the shared embedding the config ties it to")
    if not cfg.tie_word_embeddings and word in out:
        out.setdefault("lm_head.weight", out[word])
    return out


def save_hf(model: Seq2SeqForConditionalGeneration, out_dir: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` that HF's ``from_pretrained`` loads."""
    cfg = model.cfg
    hf_config = to_hf_config(cfg)  # first: an inexpressible config fails before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = to_hf_state_dict(model.state_dict(), cfg)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    save_file(tensors, str(out_dir / HF_WEIGHTS), metadata={"format": "pt"})
    (out_dir / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")


def load_hf(hf_dir: Path) -> Seq2SeqForConditionalGeneration:
    """Build our model from an HF T5 / BART directory (``config.json`` + ``model.safetensors``)."""
    hf_dir = Path(hf_dir)
    for name in (HF_CONFIG, HF_WEIGHTS):
        if not (hf_dir / name).is_file():
            raise InputError(hf_dir / name, "missing; not an HF model directory with unsharded safetensors")
    cfg = from_hf_config(json.loads((hf_dir / HF_CONFIG).read_text()))
    model = Seq2SeqForConditionalGeneration(cfg)
    missing, unexpected = model.load_state_dict(
        from_hf_state_dict(load_file(str(hf_dir / HF_WEIGHTS)), cfg), strict=False
    )
    missing = sorted(set(missing) - _our_aliases(cfg))
    if missing or unexpected:
        raise ConfigError(f"{hf_dir / HF_WEIGHTS}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
