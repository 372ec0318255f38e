"""ALBERT's factorised embeddings and cross-layer sharing (parameter counts, real sharing, HF
parity), BERT-base's parameter count against HF, and the pretraining wrapper's outputs."""

from __future__ import annotations

import pytest
import torch

from plm_core.config import ModelConfig, model_preset
from plm_core.errors import ConfigError
from plm_core.models.encoder import BertForMaskedLM, BertForPreTraining, BertModel
from plm_core.models.hf_bert import from_hf_albert_state_dict, to_hf_albert_config, to_hf_albert_state_dict

torch.set_num_threads(1)

ALBERT = ModelConfig(
    arch="albert",
    vocab_size=101,
    embedding_size=16,
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    intermediate_size=64,
    max_position=40,
    share_layers=True,
)


def _albert(**overrides) -> ModelConfig:
    return ModelConfig(**{**ALBERT.__dict__, **overrides})


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once


def _albert_formula(cfg: ModelConfig, *, mlm_head: bool, pretraining_heads: bool = False) -> int:
    """ALBERT's parameters written out (Lan et al. 2020, section 3.1): V*E + E*H instead of V*H,
    and one set of layer parameters when shared."""
    V, E, H, F, P, S = (
        cfg.vocab_size,
        cfg.embedding_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.max_position,
        cfg.type_vocab_size,
    )
    embeddings = (V + P + S) * E + 2 * E  # word, position, segment tables + LayerNorm
    projection = E * H + H
    layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H  # F: intermediate size
    layers = 1 if cfg.share_layers else cfg.num_layers
    total = embeddings + projection + layers * layer
    if mlm_head:
        total += (H * E + E) + 2 * E + V  # transform H -> E, LayerNorm, decoder bias (weight tied)
    if pretraining_heads:
        total += (H * H + H) + (2 * H + 2)  # pooler + two-way classifier
    return total


@pytest.mark.parametrize("share", [True, False])
def test_albert_parameter_count_matches_the_formula(share: bool) -> None:
    cfg = _albert(share_layers=share)
    assert _count(BertModel(cfg)) == _albert_formula(cfg, mlm_head=False)
    assert _count(BertForMaskedLM(cfg)) == _albert_formula(cfg, mlm_head=True)
    assert _count(BertForPreTraining(cfg)) == _albert_formula(cfg, mlm_head=True, pretraining_heads=True)


def test_albert_base_size_is_about_12m_parameters() -> None:
    """The published ALBERT-base: 12M parameters against BERT-base's 108M (paper, table 1)."""
    cfg = model_preset(
        "base", "encoder", arch="albert", vocab_size=30000, embedding_size=128, share_layers=True
    )
    with torch.device("meta"):
        model = BertForMaskedLM(cfg)
    assert _count(model) == _albert_formula(cfg, mlm_head=True)
    assert 11_000_000 < _count(model) < 12_500_000


def test_shared_layers_are_one_block_applied_num_layers_times() -> None:
    torch.manual_seed(0)
    shared = BertModel(_albert()).eval()
    assert len(shared.layers) == 1
    assert not any(k.startswith("layers.1.") for k in shared.state_dict())
    # A deeper shared stack has exactly the same parameters.
    assert _count(BertModel(_albert(num_layers=12))) == _count(shared)
    ids = torch.randint(5, 101, (2, 9))
    with torch.no_grad():
        x = shared.embedding_projection(shared.embeddings(ids))
        for _ in range(ALBERT.num_layers):
            x = shared.layers[0](x, None)
        torch.testing.assert_close(shared(ids), x, rtol=0, atol=0)
    # Every application contributes to the gradient of the one block.
    shared.train()
    shared(ids).sum().backward()
    assert shared.layers[0].attn.query.weight.grad is not None


def test_unshared_albert_has_one_block_per_layer() -> None:
    model = BertModel(_albert(share_layers=False))
    assert len(model.layers) == ALBERT.num_layers
    assert model.layers[0].attn.query.weight is not model.layers[1].attn.query.weight


def test_bert_refuses_a_factorised_embedding() -> None:
    with pytest.raises(ConfigError, match="arch='albert'"):
        BertModel(ModelConfig(vocab_size=50, hidden_size=32, num_heads=2, embedding_size=16))


def test_bert_base_parameter_count_matches_hf() -> None:
    """model_preset("base") is BERT-base: its masked LM has HF BertForMaskedLM's count (~110M)."""
    transformers = pytest.importorskip("transformers")
    from plm_core.models.io import to_hf_bert_config

    cfg = model_preset("base", "encoder", vocab_size=30522)
    with torch.device("meta"):
        ours = _count(BertForMaskedLM(cfg))
        theirs = _count(transformers.BertForMaskedLM(transformers.BertConfig(**to_hf_bert_config(cfg))))
    assert abs(ours - theirs) / theirs < 0.01
    assert 108_000_000 < ours < 111_000_000


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hf_config(transformers, cfg: ModelConfig):
    return transformers.AlbertConfig(**to_hf_albert_config(cfg), attn_implementation="eager")


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, ALBERT.vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 8:] = ALBERT.pad_token_id
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("share", [True, False])
def test_parity_with_hf_albert(transformers, share: bool) -> None:
    cfg = _albert(share_layers=share)
    torch.manual_seed(0)
    hf = transformers.AlbertForMaskedLM(_hf_config(transformers, cfg)).eval()
    ours = BertForMaskedLM(cfg).eval()
    ours.load_state_dict(from_hf_albert_state_dict(hf.state_dict()))
    assert _count(ours) == _count(hf)
    ids, mask, types = _inputs()
    real = mask.bool()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types)["logits"]
        hf_hidden = hf.albert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        hidden = ours.encoder(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(hidden[real], hf_hidden[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_pretraining_weights_load_into_hf_albert_strictly(transformers) -> None:
    torch.manual_seed(0)
    ours = BertForPreTraining(ALBERT).eval()
    hf = transformers.AlbertForPreTraining(_hf_config(transformers, ALBERT)).eval()
    hf.load_state_dict(to_hf_albert_state_dict(ours.state_dict()), strict=True)
    ids, mask, types = _inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got["sentence_logits"], expected.sop_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        got["logits"][mask.bool()], expected.prediction_logits[mask.bool()], atol=1e-4, rtol=1e-4
    )
    assert from_hf_albert_state_dict(hf.state_dict()).keys() == ours.state_dict().keys()


def test_pretraining_loss_is_mlm_plus_sentence_loss() -> None:
    torch.manual_seed(0)
    model = BertForPreTraining(ALBERT).eval()
    ids, mask, types = _inputs()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 3] = 7, 9
    sentence_labels = torch.tensor([0, 1])
    with torch.no_grad():
        out = model(ids, mask, types, labels=labels, sentence_labels=sentence_labels)
        dense = model(ids, mask, types)["logits"]  # [B, T, V]
    expected_mlm = torch.nn.functional.cross_entropy(dense[labels != -100], labels[labels != -100])
    expected_sentence = torch.nn.functional.cross_entropy(out["sentence_logits"], sentence_labels)
    torch.testing.assert_close(out["mlm_loss"], expected_mlm)
    torch.testing.assert_close(out["sentence_loss"], expected_sentence)
    torch.testing.assert_close(out["loss"], expected_mlm + expected_sentence)
    assert out["sentence_logits"].shape == (2, 2)
    # The MLM decoder is tied to the (factorised, [V, E]) word embeddings.
    assert model.mlm_head.decoder.weight is model.encoder.embeddings.word.weight
    assert model.mlm_head.decoder.weight.shape == (ALBERT.vocab_size, ALBERT.embedding_size)
