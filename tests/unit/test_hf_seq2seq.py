"""Export to and import from HF transformers' T5 / BART: same logits both ways, same size."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from plm_core.config import model_preset
from plm_core.errors import ConfigError
from plm_core.models.hf_seq2seq import from_hf_config, load_hf, save_hf, to_hf_config
from plm_core.models.seq2seq import BART, Seq2SeqForConditionalGeneration

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

V = 61
# Few buckets and a short max distance, so 20-token inputs reach T5's logarithmic and clipped buckets.
_TINY = dict(
    vocab_size=V,
    hidden_size=32,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    intermediate_size=64,
    max_position=40,
    dropout=0.0,
    attention_dropout=0.0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
)
EXPORTS = {
    "t5": {},
    "t5-untied-gated-gelu": {"tie_word_embeddings": False, "gated_ffn": True, "activation": "gelu"},
    "t5-gated-gelu-tanh": {"gated_ffn": True, "activation": "gelu_tanh"},
    "bart": BART,
    "bart-untied-relu": {**BART, "tie_word_embeddings": False, "activation": "relu"},
}
_HF_SMALL = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
IMPORTS = {
    "t5": lambda: transformers.T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        dropout_rate=0.0,
    ),
    "t5-v1.1": lambda: transformers.T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "bart": lambda: transformers.BartConfig(
        vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=40,
        pad_token_id=0,
        bos_token_id=5,
        eos_token_id=6,
        decoder_start_token_id=6,
        forced_eos_token_id=6,
        **_HF_SMALL,
    ),
}


def _scramble(model: nn.Module) -> None:
    """Move every tensor off its initial value (unit norms, zero biases): parity must hold for all."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded encoder ids (pad 0) with their mask, and decoder ids."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, V, (3, 20), generator=g)
    mask = (torch.arange(20)[None, :] < torch.tensor([[20], [13], [6]])).long()
    return ids * mask, mask, torch.randint(7, V, (3, 18), generator=g)


def _logits(model: nn.Module) -> torch.Tensor:
    ids, mask, dec = _batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    return out["logits"]


def _hf_class(model_type: str) -> type:
    return {"t5": transformers.T5ForConditionalGeneration, "bart": transformers.BartForConditionalGeneration}[
        model_type
    ]


@pytest.mark.parametrize("variant", EXPORTS)
def test_exported_model_gives_hf_the_same_logits(tmp_path, variant):
    torch.manual_seed(0)
    model = Seq2SeqForConditionalGeneration(model_preset("tiny", "seq2seq", **{**_TINY, **EXPORTS[variant]}))
    _scramble(model)
    save_hf(model.eval(), tmp_path)
    hf = _hf_class(model.cfg.arch).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(hf), _logits(model), atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", IMPORTS)
def test_hf_model_imports_with_the_same_logits(tmp_path, variant):
    torch.manual_seed(0)
    hf_config = IMPORTS[variant]()
    hf = _hf_class(hf_config.model_type)(hf_config)
    _scramble(hf)
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path).eval()
    torch.testing.assert_close(_logits(model), _logits(hf.eval()), atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", EXPORTS)
def test_config_round_trips_through_hf(tmp_path, variant):
    hf = to_hf_config(model_preset("tiny", "seq2seq", **{**_TINY, **EXPORTS[variant]}))
    assert to_hf_config(from_hf_config(json.loads(json.dumps(hf)))) == hf


def test_parameter_count_equals_hf_t5_small():
    cfg = model_preset("base", "seq2seq", vocab_size=32128)
    with torch.device("meta"):
        ours = Seq2SeqForConditionalGeneration(cfg)
        theirs = transformers.T5ForConditionalGeneration(transformers.T5Config.from_dict(to_hf_config(cfg)))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 60_506_624


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"position": "learned"}, "position"),
        ({**BART, "layer_norm_eps": 1e-6}, "layer_norm_eps"),
        ({**BART, "gated_ffn": True}, "gated_ffn"),
    ],
)
def test_configs_hf_cannot_express_are_refused_before_writing(tmp_path, overrides, field):
    model = Seq2SeqForConditionalGeneration(model_preset("tiny", "seq2seq", **{**_TINY, **overrides}))
    with pytest.raises(ConfigError, match=field):
        save_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
