"""The GPT decoder: no information from the future, padding on either side, the KV cache, the
shifted loss, tying, classification from the last real token, overfitting, and GPT-2's size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plm_core.config import model_preset
from plm_core.errors import ConfigError
from plm_core.models.decoder import GPTForCausalLM, GPTForSequenceClassification, GPTModel
from plm_core.models.io import load_encoder_into, save_model
from plm_core.objectives.clm import causal_lm_batch

torch.set_num_threads(1)

V = 61
VARIANTS = {
    "gpt2": {},
    "rotary": dict(position="rotary"),
    "sinusoidal_post_ln": dict(position="sinusoidal", norm="post"),
    "llama_like": dict(
        position="rotary",
        norm_type="rmsnorm",
        activation="silu",
        gated_ffn=True,
        bias=False,
        tie_word_embeddings=False,
    ),
}


def _cfg(**overrides):
    sizes = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=64)
    return model_preset(
        "tiny", "decoder", vocab_size=V, dropout=0.0, attention_dropout=0.0, **{**sizes, **overrides}
    )


def _model(variant: str = "gpt2", seed: int = 0) -> GPTForCausalLM:
    torch.manual_seed(seed)
    return GPTForCausalLM(_cfg(**VARIANTS[variant])).eval()


def _ids(B: int = 1, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_position_sees_a_later_token(variant):
    model = _model(variant)
    ids = _ids()
    T = ids.size(1)
    with torch.no_grad():
        base = model(ids)["logits"]  # [1, T, V]
        for t in range(T - 1):
            changed = ids.clone()
            changed[0, t + 1] = (ids[0, t + 1] % (V - 1)) + 1  # another real token
            logits = model(changed)["logits"]
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(logits[:, t + 1], base[:, t + 1], atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_left_or_right_leaves_real_positions_unchanged(variant):
    model = _model(variant)
    short, long = _ids(T=7, seed=1), _ids(T=10, seed=2)
    pad = 0
    left = torch.full((2, 10), pad)
    left[0, 3:], left[1] = short[0], long[0]
    left_mask = (torch.arange(10) >= torch.tensor([[3], [0]])).long()
    right = torch.full((2, 10), pad)
    right[0, :7], right[1] = short[0], long[0]
    right_mask = (torch.arange(10) < torch.tensor([[7], [10]])).long()
    with torch.no_grad():
        alone_short, alone_long = model(short)["logits"], model(long)["logits"]
        by_left = model(left, attention_mask=left_mask)["logits"]
        by_right = model(right, attention_mask=right_mask)["logits"]
    for batched in (by_left[0, 3:], by_right[0, :7]):
        torch.testing.assert_close(batched, alone_short[0], atol=1e-5, rtol=1e-5)
    for batched in (by_left[1], by_right[1]):
        torch.testing.assert_close(batched, alone_long[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(by_left).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_gives_the_logits_of_a_full_pass(variant):
    model = _model(variant)
    ids = _ids(B=2, T=9, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as in batched generation
    with torch.no_grad():
        full = model(ids, attention_mask=mask)["logits"]
        out = model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        steps = [out["logits"]]
        for t in range(5, 9):
            out = model(
                ids[:, t : t + 1],
                attention_mask=mask[:, : t + 1],
                past_key_values=out["past_key_values"],
                use_cache=True,
            )
            steps.append(out["logits"])
        # Without a mask, positions continue from the cache length.
        plain = model(ids[:1])["logits"]
        first = model(ids[:1, :8], use_cache=True)
        last = model(ids[:1, 8:], past_key_values=first["past_key_values"])["logits"]
    cache = out["past_key_values"]
    assert len(cache) == 2 and all(len(layer) == 2 and layer[0].shape == (2, 4, 9, 8) for layer in cache)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last[:, -1], plain[:, -1], atol=1e-5, rtol=1e-5)


def test_loss_is_the_shifted_cross_entropy_and_ignores_minus_100():
    model = _model()
    batch = causal_lm_batch(_ids(B=2, T=8))
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert batch["labels"].data_ptr() != batch["input_ids"].data_ptr()
    batch["labels"][1, 5:] = -100
    out = model(**batch)
    logits = out["logits"]
    keep = batch["labels"][:, 1:] != -100
    expected = F.cross_entropy(logits[:, :-1][keep], batch["labels"][:, 1:][keep])
    torch.testing.assert_close(out["loss"], expected)

    nothing = model(batch["input_ids"], labels=torch.full_like(batch["labels"], -100))
    nothing["loss"].backward()
    assert nothing["loss"].item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_lm_head_tied_or_untied():
    tied = GPTForCausalLM(_cfg())
    assert tied.lm_head.weight is tied.encoder.embeddings.word.weight
    untied = GPTForCausalLM(_cfg(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.encoder.embeddings.word.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + V * 32
    assert all(k.startswith(("encoder.", "lm_head.")) for k in tied.state_dict())


def test_residual_projections_start_smaller_with_depth():
    """GPT-2's init: std / sqrt(2 L) on the projections that write into the residual stream."""
    torch.manual_seed(0)
    body = GPTModel(_cfg(num_layers=8, hidden_size=64, intermediate_size=256))
    block = body.layers[3]
    assert block.attn.query.weight.std().item() == pytest.approx(0.02, rel=0.1)
    for w in (block.attn.out.weight, block.ffn.down.weight):
        assert w.std().item() == pytest.approx(0.02 / 4, rel=0.1)


def test_gpt_overfits_one_small_batch():
    torch.manual_seed(0)
    model = GPTForCausalLM(_cfg())
    batch = causal_lm_batch(_ids(B=4, T=16, seed=5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(300):
        loss = model(**batch)["loss"]
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_base_preset_is_gpt2_small():
    cfg = model_preset("base", "decoder", vocab_size=50257)
    with torch.device("meta"):
        model = GPTForCausalLM(cfg)
    count = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert abs(count - 124_439_808) / 124_439_808 < 0.01
    assert count == 124_439_808


def test_classifier_reads_the_last_real_token_with_either_padding(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    clf = GPTForSequenceClassification(cfg, num_labels=3).eval()
    assert {k.split(".")[0] for k in clf.state_dict()} == {"encoder", "classifier"}
    seq = _ids(T=6, seed=7)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], dim=1)
    right = torch.cat([seq, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    left_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = clf(seq)["logits"]
        by_left = clf(left, attention_mask=left_mask)["logits"]
        by_right = clf(right, attention_mask=left_mask.flip(-1), token_type_ids=torch.zeros_like(right))[
            "logits"
        ]
        hidden, _ = clf.encoder(seq)
    torch.testing.assert_close(by_left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, clf.classifier(hidden[:, -1]))
    out = clf(torch.cat([seq, seq]), labels=torch.tensor([0, 2]))
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"], torch.tensor([0, 2])))

    # The pretrained body moves in with the loader every family shares.
    pretrained = GPTForCausalLM(cfg)
    save_model(pretrained, cfg, tmp_path, extra={"task": "clm"})
    load_encoder_into(clf, tmp_path)
    for name, t in pretrained.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[name], t)


def test_bad_inputs_are_config_errors():
    model = _model()
    with pytest.raises(ConfigError, match="max_position"):
        model(_ids(T=65))
    with pytest.raises(ConfigError, match="attention_mask"):
        model(_ids(T=5), attention_mask=torch.ones(1, 4))
    with pytest.raises(ConfigError, match="relative"):
        GPTModel(_cfg(position="relative"))
    with pytest.raises(ConfigError, match="decoder-family"):
        GPTModel(model_preset("tiny", "encoder", vocab_size=V))
    with pytest.raises(ConfigError, match="vocab_size"):
        GPTModel(model_preset("tiny", "decoder"))
