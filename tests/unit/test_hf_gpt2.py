"""GPT-2 parity with HF transformers: our weights exported to an HF directory, and HF GPT-2 weights
imported into ours, give the same logits; parameter counts agree."""

from __future__ import annotations

import json

import pytest
import torch

from plm_core.config import model_preset
from plm_core.errors import ConfigError
from plm_core.models.decoder import GPTForCausalLM
from plm_core.models.hf_gpt2 import (
    export_gpt2,
    from_hf_gpt2_config,
    from_hf_gpt2_state_dict,
    import_gpt2,
    to_hf_gpt2_config,
)

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

V = 97


def _cfg(**overrides):
    sizes = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=40)
    return model_preset("tiny", "decoder", vocab_size=V, **{**sizes, **overrides})


def _ids(B: int = 2, T: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def _hf_from_dir(path):
    return transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("tied", [True, False])
def test_exported_weights_give_our_logits_in_hf(tmp_path, tied):
    torch.manual_seed(0)
    ours = GPTForCausalLM(_cfg(tie_word_embeddings=tied)).eval()
    export_gpt2(ours, tmp_path, bos_token_id=5, eos_token_id=6)
    hf = _hf_from_dir(tmp_path)
    assert hf.config.eos_token_id == 6 and hf.config.activation_function == "gelu_new"
    assert (hf.lm_head.weight is hf.transformer.wte.weight) == tied
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: HF needs the positions we derive from the mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = ours(ids, labels=ids)
        expected = hf(input_ids=ids, labels=ids)
        got_padded = ours(ids, attention_mask=mask)["logits"]
        hf_padded = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(got["logits"], expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["loss"], expected.loss, atol=1e-5, rtol=1e-5)  # same shift
    real = mask.bool()
    torch.testing.assert_close(got_padded[real], hf_padded[real], atol=1e-4, rtol=1e-4)


def test_hf_gpt2_imports_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=40, n_embd=32, n_layer=2, n_head=4, attn_implementation="eager"
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = import_gpt2(tmp_path).eval()
    assert ours.cfg.intermediate_size == 128 and ours.cfg.activation == "gelu_tanh"
    assert ours.lm_head.weight is ours.encoder.embeddings.word.weight
    ids = _ids()
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        got = ours(ids)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # The original OpenAI checkpoints are a bare GPT2Model (no "transformer." prefix) with mask buffers.
    bare = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 40, 40)
    again = GPTForCausalLM(ours.cfg).eval()
    again.load_state_dict(from_hf_gpt2_state_dict(bare, ours.cfg))
    with torch.no_grad():
        torch.testing.assert_close(again(ids)["logits"], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="no GPT-2 counterpart"):
        from_hf_gpt2_state_dict({**bare, "h.0.attn.q_attn.weight": torch.zeros(1)}, ours.cfg)


def test_base_preset_parameter_count_matches_hf_gpt2():
    cfg = model_preset("base", "decoder", vocab_size=50257)
    with torch.device("meta"):
        ours = GPTForCausalLM(cfg)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**to_hf_gpt2_config(cfg)))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf.parameters()) == 124_439_808


def test_configs_round_trip_and_non_gpt2_switches_are_refused(tmp_path):
    cfg = _cfg()
    assert from_hf_gpt2_config(json.loads(json.dumps(to_hf_gpt2_config(cfg)))) == cfg
    with pytest.raises(ConfigError, match="position='rotary'.*gated_ffn=True"):
        to_hf_gpt2_config(_cfg(position="rotary", gated_ffn=True))
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        from_hf_gpt2_config({"scale_attn_by_inverse_layer_idx": True})
