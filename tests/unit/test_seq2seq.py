"""T5 / BART encoder-decoders: no decoder leakage, padding invariance, the KV-cache protocol that
generation drives, teacher forcing, overfitting, state-dict layout and the T5-small size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plm_core.config import model_preset
from plm_core.errors import ConfigError
from plm_core.models.io import load_encoder_into, load_weights, save_model
from plm_core.models.seq2seq import (
    BART,
    EOS_ID,
    Seq2SeqForConditionalGeneration,
    Seq2SeqForSequenceClassification,
    Seq2SeqModel,
    shift_right,
)

torch.set_num_threads(1)

V = 61
_TINY = dict(
    vocab_size=V,
    hidden_size=32,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    intermediate_size=64,
    max_position=64,
    dropout=0.0,
    attention_dropout=0.0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
# The two architectures, plus the other position kinds and feed-forwards the stacks accept.
VARIANTS = {
    "t5": {},
    "bart": BART,
    "bart-sinusoidal-preln-rms": {**BART, "position": "sinusoidal", "norm": "pre", "norm_type": "rmsnorm"},
    "t5-rotary-swiglu": {"position": "rotary", "gated_ffn": True, "activation": "silu"},
}


def _cfg(variant: str, **overrides):
    return model_preset("tiny", "seq2seq", **{**_TINY, **VARIANTS[variant], **overrides})


def _model(variant: str, seed: int = 0, **overrides) -> Seq2SeqForConditionalGeneration:
    torch.manual_seed(seed)
    return Seq2SeqForConditionalGeneration(_cfg(variant, **overrides)).eval()


def _ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, V, (B, T), generator=g)


def _padded(lengths: list[int], T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] (pad = 0) and their attention mask."""
    ids = _ids(len(lengths), T, seed)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_later_decoder_token_never_changes_earlier_outputs(variant):
    model = _model(variant)
    enc_ids, enc_mask = _padded([9, 6], 9)
    dec = _ids(2, 8, seed=1)
    with torch.no_grad():
        enc = model.encode(enc_ids, enc_mask)
        base = model.decode(dec, enc, enc_mask)["logits"]  # [2, 8, V]
        for t in range(dec.size(1) - 1):
            changed = dec.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1 - 7) % (V - 7) + 7  # another ordinary token
            logits = model.decode(changed, enc, enc_mask)["logits"]
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(logits[:, t + 1], base[:, t + 1], atol=1e-4)  # it is read at t+1


@pytest.mark.parametrize("variant", VARIANTS)
def test_encoder_padding_changes_no_output(variant):
    model = _model(variant)
    enc_ids, enc_mask = _padded([9, 5], 12)
    dec = _ids(2, 6, seed=1)
    with torch.no_grad():
        batched = model(enc_ids, enc_mask, decoder_input_ids=dec)["logits"]  # [2, 6, V]
        enc_batched = model.encode(enc_ids, enc_mask)
        for row, length in enumerate((9, 5)):
            alone_ids = enc_ids[row : row + 1, :length]  # unpadded
            alone = model(alone_ids, decoder_input_ids=dec[row : row + 1])["logits"]
            torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                enc_batched[row, :length], model.encode(alone_ids)[0], atol=1e-5, rtol=1e-5
            )
        unmasked = model(enc_ids, decoder_input_ids=dec)["logits"]
    assert not torch.allclose(unmasked[1], batched[1], atol=1e-3)  # the mask is what made it equal


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_step_by_step_equals_the_full_forward(variant):
    model = _model(variant)
    L = model.cfg.num_decoder_layers
    enc_ids, enc_mask = _padded([7, 4], 7)
    dec = _ids(2, 6, seed=1)
    with torch.no_grad():
        enc = model.encode(enc_ids, enc_mask)
        full = model.decode(dec, enc, enc_mask)["logits"]  # [2, 6, V]
        past, steps = None, []
        for t in range(3):
            out = model.decode(dec[:, t : t + 1], enc, enc_mask, past_key_values=past, use_cache=True)
            past = out["past_key_values"]
            steps.append(out["logits"])
        assert len(past) == L and all(
            len(layer) == 4 and all(x.size(0) == 2 for x in layer) for layer in past
        )
        torch.testing.assert_close(torch.cat(steps, dim=1), full[:, :3], atol=1e-5, rtol=1e-5)
        # Beam search reorders the cache along dim 0; decoding then continues as for the reordered batch.
        beams = torch.tensor([1, 1, 0])
        past = [tuple(x.index_select(0, beams) for x in layer) for layer in past]
        out = model.decode(dec[beams, 3:], enc[beams], enc_mask[beams], past_key_values=past, use_cache=True)
        reordered = model.decode(dec[beams], enc[beams], enc_mask[beams])["logits"]
        torch.testing.assert_close(out["logits"], reordered[:, 3:], atol=1e-5, rtol=1e-5)
        assert model.decode(dec, enc, enc_mask)["past_key_values"] is None


@pytest.mark.parametrize("variant", ["t5", "bart"])
def test_labels_are_shifted_right_behind_the_decoder_start(variant):
    model = _model(variant)
    assert model.decoder_start_token_id == (0 if variant == "t5" else EOS_ID)
    ids = _ids(2, 7)
    labels = _ids(2, 5, seed=2)
    labels[1, 3:] = -100  # unscored tail
    decoder_input_ids = shift_right(labels, model.decoder_start_token_id, pad_id=0)
    assert decoder_input_ids[:, 0].eq(model.decoder_start_token_id).all()
    assert decoder_input_ids[1].tolist()[4] == 0 and torch.equal(decoder_input_ids[:, 1:4], labels[:, :3])
    with torch.no_grad():
        out = model(ids, labels=labels)
        explicit = model(ids, decoder_input_ids=decoder_input_ids)["logits"]
    torch.testing.assert_close(out["logits"], explicit)
    scored = labels != -100
    torch.testing.assert_close(out["loss"], F.cross_entropy(explicit[scored], labels[scored]))


@pytest.mark.parametrize("variant", ["t5", "bart"])
def test_overfits_one_small_batch(variant):
    model = _model(variant, hidden_size=64, num_heads=4, intermediate_size=128).train()
    ids, mask = _padded([12, 10, 12, 8], 12)
    labels = _ids(4, 8, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        loss = model(ids, mask, labels=labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05


def test_t5_trains_the_pad_row_it_starts_decoding_from_and_bart_freezes_it():
    for variant, trains in (("t5", True), ("bart", False)):
        model = _model(variant, tie_word_embeddings=False).train()  # tied, the head's gradient reaches it
        model(_ids(2, 5), labels=_ids(2, 4, seed=1))["loss"].backward()
        grad = model.encoder.embeddings.word.weight.grad[0]  # [PAD] = 0
        assert bool(grad.abs().sum() > 0) is trains


def test_state_dict_layout_tying_and_save_load(tmp_path):
    model = _model("t5")
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "lm_head"}
    word = model.encoder.embeddings.word.weight
    assert model.decoder.embeddings.word.weight is word and model.lm_head.weight is word
    untied = _model("bart", tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.encoder.embeddings.word.weight

    save_model(model, model.cfg, tmp_path / "lm")
    restored = Seq2SeqForConditionalGeneration(model.cfg).eval()
    load_weights(restored, tmp_path / "lm")
    ids, dec = _ids(2, 6), _ids(2, 4, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(
            restored(ids, decoder_input_ids=dec)["logits"], model(ids, decoder_input_ids=dec)["logits"]
        )

    clf = Seq2SeqForSequenceClassification(model.cfg, num_labels=3)
    assert {k.split(".")[0] for k in clf.state_dict()} == {"encoder", "pooler", "classifier"}
    load_encoder_into(clf, tmp_path / "lm")
    for name, t in clf.encoder.state_dict().items():
        torch.testing.assert_close(t, model.encoder.state_dict()[name], atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["t5", "bart"])
def test_classifier_pools_real_tokens_only(variant):
    torch.manual_seed(0)
    clf = Seq2SeqForSequenceClassification(_cfg(variant), num_labels=3).eval()
    ids, mask = _padded([9, 5], 9)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        out = clf(ids, mask, labels=labels)
        alone = clf(ids[1:, :5])["logits"]
    assert out["logits"].shape == (2, 3)
    torch.testing.assert_close(out["logits"][1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"], labels))


def test_body_returns_decoder_and_encoder_states():
    torch.manual_seed(0)
    body = Seq2SeqModel(_cfg("bart")).eval()
    out = body(_ids(2, 7), decoder_input_ids=_ids(2, 5, seed=1))
    assert out["last_hidden_state"].shape == (2, 5, 32) and out["encoder_hidden_state"].shape == (2, 7, 32)


def test_base_preset_has_t5_small_size():
    with torch.device("meta"):
        model = Seq2SeqForConditionalGeneration(model_preset("base", "seq2seq", vocab_size=32128))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 60_506_624) / 60_506_624 < 0.01
    assert count == 60_506_624  # T5-small exactly: same matrices, one shared embedding


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="seq2seq-family"):
        Seq2SeqForConditionalGeneration(model_preset("tiny", "encoder", vocab_size=V))
    with pytest.raises(ConfigError, match="vocab_size"):
        Seq2SeqForConditionalGeneration(model_preset("tiny", "seq2seq"))
    with pytest.raises(ConfigError, match="max_position"):
        _model("bart", max_position=8)(_ids(1, 9), decoder_input_ids=_ids(1, 3))
