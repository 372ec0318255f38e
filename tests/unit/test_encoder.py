"""The BERT encoder, its heads and model directories: padding, HF parity, tying, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models import BertForMaskedLM, BertForSequenceClassification, BertModel
from plm_core.models.io import (
    from_hf_bert_state_dict,
    load_config,
    load_encoder_into,
    load_state_dict,
    load_weights,
    save_model,
    to_hf_bert_config,
    to_hf_bert_state_dict,
)

CFG = ModelConfig(
    vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=40
)


def _ids(B: int = 3, T: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, CFG.vocab_size, (B, T), generator=g)


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = BertModel(CFG).eval()
    ids = _ids(B=1, T=10)
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)  # [1, 16], 6 x [PAD]
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1).long()
    with torch.no_grad():
        alone = model(ids)  # [1, 10, H]
        with_pad = model(padded, attention_mask=mask)  # [1, 16, H]
        unmasked = model(padded)
    torch.testing.assert_close(with_pad[:, :10], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[:, :10], alone, atol=1e-3)  # the mask is what made it equal


def test_body_weights_live_under_encoder_and_decoder_is_tied():
    model = BertForMaskedLM(CFG)
    assert all(k.startswith(("encoder.", "mlm_head.")) for k in model.state_dict())
    assert model.mlm_head.decoder.weight is model.encoder.embeddings.word.weight
    clf = BertForSequenceClassification(CFG, num_labels=3)
    assert {k.split(".")[0] for k in clf.state_dict()} == {"encoder", "pooler", "classifier"}


def test_mlm_logits_only_at_labelled_positions():
    torch.manual_seed(0)
    model = BertForMaskedLM(CFG).eval()
    ids = _ids()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[2, 7], labels[2, 9] = 11, 12, 13
    with torch.no_grad():
        sparse = model(ids, labels=labels)
        dense = model(ids)["logits"]  # [B, T, V]
    assert sparse["logits"].shape == (3, CFG.vocab_size)
    torch.testing.assert_close(sparse["logits"], dense[labels != -100])
    expected = torch.nn.functional.cross_entropy(dense[labels != -100], labels[labels != -100])
    torch.testing.assert_close(sparse["loss"], expected)


def test_mlm_without_selected_positions_gives_zero_loss_and_gradients():
    model = BertForMaskedLM(CFG)
    out = model(_ids(), labels=torch.full((3, 16), -100))
    out["loss"].backward()
    assert out["loss"].item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_sequence_longer_than_max_position_is_a_config_error():
    with pytest.raises(ConfigError, match="max_position"):
        BertModel(CFG)(_ids(T=41))


@pytest.fixture(scope="module")
def hf_pair():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(**to_hf_bert_config(CFG), attn_implementation="eager")
    torch.manual_seed(0)
    return transformers, hf_cfg


def _hf_inputs():
    ids = _ids(B=2, T=12)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # the second sequence is padded
    ids[1, 8:] = CFG.pad_token_id
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


def test_parity_with_hf_bert_for_masked_lm(hf_pair):
    transformers, hf_cfg = hf_pair
    hf = transformers.BertForMaskedLM(hf_cfg).eval()
    ours = BertForMaskedLM(CFG).eval()
    ours.load_state_dict(from_hf_bert_state_dict(hf.state_dict()))
    ids, mask, types = _hf_inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types)["logits"]
        hidden = ours.encoder(ids, attention_mask=mask, token_type_ids=types)
        hf_hidden = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden[real], hf_hidden[real], atol=1e-4, rtol=1e-4)


def test_our_weights_load_into_hf_strictly(hf_pair):
    transformers, hf_cfg = hf_pair
    ours = BertForSequenceClassification(CFG, num_labels=3).eval()
    hf = transformers.BertForSequenceClassification(
        transformers.BertConfig(**to_hf_bert_config(CFG), num_labels=3, attn_implementation="eager")
    ).eval()
    hf.load_state_dict(to_hf_bert_state_dict(ours.state_dict()), strict=True)
    ids, mask, types = _hf_inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    mlm = BertForMaskedLM(CFG)
    hf_mlm = transformers.BertForMaskedLM(hf_cfg)
    hf_mlm.load_state_dict(to_hf_bert_state_dict(mlm.state_dict()), strict=True)
    assert from_hf_bert_state_dict(hf_mlm.state_dict()).keys() == mlm.state_dict().keys()
    # Original BERT releases are BertForPreTraining: the NSP head has no counterpart and is dropped.
    pretraining = from_hf_bert_state_dict(transformers.BertForPreTraining(hf_cfg).state_dict())
    assert set(pretraining) == set(mlm.state_dict()) | {"pooler.dense.weight", "pooler.dense.bias"}


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BertForMaskedLM(CFG)
    save_model(model, CFG, tmp_path, extra={"task": "mlm"})
    cfg, extra = load_config(tmp_path)
    assert cfg == CFG and extra == {"task": "mlm"}
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_size"] == 32
    stored = load_state_dict(tmp_path)
    assert "mlm_head.decoder.weight" not in stored  # the tied alias is stored once
    restored = BertForMaskedLM(cfg)
    load_weights(restored, tmp_path)
    assert restored.mlm_head.decoder.weight is restored.encoder.embeddings.word.weight
    for name, t in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], t, rtol=0, atol=0)


def test_load_encoder_into_a_classifier(tmp_path):
    pretrained = BertForMaskedLM(CFG)
    save_model(pretrained, CFG, tmp_path)
    clf = BertForSequenceClassification(CFG, num_labels=2)
    head_before = clf.classifier.weight.clone()
    load_encoder_into(clf, tmp_path)
    for name, t in pretrained.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[name], t)
    assert torch.equal(clf.classifier.weight, head_before)


def test_load_encoder_into_names_the_mismatched_tensor(tmp_path):
    save_model(BertForMaskedLM(CFG), CFG, tmp_path)
    wider = BertForSequenceClassification(ModelConfig(**{**CFG.__dict__, "max_position": 64}), num_labels=2)
    with pytest.raises(ConfigError, match=r"embeddings\.position\.weight.*\(40, 32\).*\(64, 32\)"):
        load_encoder_into(wider, tmp_path)
    deeper = BertForSequenceClassification(ModelConfig(**{**CFG.__dict__, "num_layers": 3}), num_labels=2)
    with pytest.raises(ConfigError, match=r"missing tensor.*layers\.2\."):
        load_encoder_into(deeper, tmp_path)
