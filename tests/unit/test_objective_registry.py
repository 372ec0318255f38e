"""Objectives by name: family checks, every registered collator builds a batch its model takes,
and a tiny BertForMaskedLM overfits one whole-word / span masked batch."""

from __future__ import annotations

import pickle

import pytest
import torch

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.errors import ConfigError
from plm_core.models.encoder import BertForMaskedLM
from plm_core.objectives.registry import FAMILY_OBJECTIVES, build_collator, check_objectives

torch.set_num_threads(1)

VOCAB = 64
META = {
    "vocab_size": VOCAB,
    "pad_id": 0,
    "unk_id": 1,
    "cls_id": 2,
    "sep_id": 3,
    "mask_id": 4,
    "bos_id": 5,
    "eos_id": 6,
    "sentinel_ids": list(range(7, 17)),
    "special_ids": list(range(17)),
}
WORD_START = torch.arange(VOCAB) % 3 != 1  # ids 1, 4, 7, ... continue a word
WORD_START[:17] = True


def _ids(B: int = 8, T: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(17, VOCAB, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = META["cls_id"], META["sep_id"]
    return ids


def test_family_objectives() -> None:
    expected = {
        "encoder": {"mlm", "wwm", "span"},
        "decoder": {"clm"},
        "seq2seq": {"span_corruption", "denoising"},
    }
    assert expected == FAMILY_OBJECTIVES
    for family, names in FAMILY_OBJECTIVES.items():
        for name in names:
            check_objectives(family, PretrainConfig(objective=name))
    check_objectives("encoder", PretrainConfig(objective="span", sentence_objective="sop"))


@pytest.mark.parametrize(
    ("family", "cfg", "message"),
    [
        ("encoder", PretrainConfig(objective="clm"), "decoder objective"),
        ("decoder", PretrainConfig(objective="mlm"), "encoder objective"),
        ("seq2seq", PretrainConfig(objective="wwm"), "does not train a seq2seq"),
        ("encoder", PretrainConfig(objective="mlm", sentence_objective="next"), "unknown sentence_objective"),
        ("decoder", PretrainConfig(objective="clm", sentence_objective="nsp"), "needs an encoder"),
        ("vision", PretrainConfig(), "unknown model family"),
    ],
)
def test_mismatches_are_config_errors(family: str, cfg: PretrainConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_objectives(family, cfg)


@pytest.mark.parametrize("objective", sorted(set().union(*FAMILY_OBJECTIVES.values())))
def test_every_objective_builds_a_picklable_collator(objective: str) -> None:
    collate = build_collator(
        objective,
        tokenizer_meta=META,
        cfg=PretrainConfig(objective=objective, mlm_probability=0.3),
        word_start=WORD_START,
        sentence_end_ids={20, 30},
    )
    collate = pickle.loads(pickle.dumps(collate))  # Ray workers and DataLoader processes get copies
    ids = _ids()
    first = collate(ids, torch.Generator().manual_seed(0))
    again = collate(ids, torch.Generator().manual_seed(0))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert {"input_ids", "labels"} <= first.keys()
    if objective in FAMILY_OBJECTIVES["encoder"]:
        selected = first["labels"] != -100
        assert first["input_ids"].shape == ids.shape and selected.any()
        assert torch.equal(first["labels"][selected], ids[selected])
    if objective == "clm":
        assert torch.equal(first["input_ids"], ids) and torch.equal(first["labels"], ids)


def test_word_level_objectives_need_a_matching_word_start() -> None:
    for objective in ("wwm", "span"):
        with pytest.raises(ConfigError, match="needs word_start"):
            build_collator(objective, tokenizer_meta=META, cfg=PretrainConfig(), word_start=None)
        with pytest.raises(ConfigError, match="vocab_size 64"):
            build_collator(objective, tokenizer_meta=META, cfg=PretrainConfig(), word_start=WORD_START[:10])


def test_denoising_with_permutation_needs_sentence_ends() -> None:
    with pytest.raises(ConfigError, match="sentence_end_ids"):
        build_collator("denoising", tokenizer_meta=META, cfg=PretrainConfig(), word_start=None)


def test_unknown_objective() -> None:
    with pytest.raises(ConfigError, match="unknown objective"):
        build_collator("electra", tokenizer_meta=META, cfg=PretrainConfig())


@pytest.mark.parametrize("objective", ["wwm", "span"])
def test_masked_lm_overfits_one_word_level_batch(objective: str) -> None:
    collate = build_collator(
        objective, tokenizer_meta=META, cfg=PretrainConfig(mlm_probability=0.25), word_start=WORD_START
    )
    batch = collate(_ids(B=4, T=24), torch.Generator().manual_seed(1))
    assert (batch["labels"] != -100).sum() >= 8
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        max_position=24, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = BertForMaskedLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05
