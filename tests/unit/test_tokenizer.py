from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from plm_core.errors import ConfigError
from plm_core.tokenizer import Tokenizer, reservoir_sample, train_tokenizer


def _train(data_run, tmp_path: Path, name: str, **overrides: object) -> Path:
    out = tmp_path / name
    out.mkdir()
    train_tokenizer(data_run.clean_dir, replace(data_run.tokenizer_cfg, **overrides), out)
    return out


def test_special_ids_are_fixed_by_contract(data_run) -> None:
    meta = json.loads((data_run.tokenizer_dir / "tokenizer.json").read_text())
    assert {k: meta[k] for k in ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id", "bos_id", "eos_id")} == {
        "pad_id": 0,
        "unk_id": 1,
        "cls_id": 2,
        "sep_id": 3,
        "mask_id": 4,
        "bos_id": 5,
        "eos_id": 6,
    }
    assert meta["sentinel_ids"] == [7, 8, 9, 10]
    assert sorted(meta["special_ids"]) == list(range(11))
    assert meta["vocab_size"] == 420
    assert meta["model_type"] == "unigram"
    tok = Tokenizer.load(data_run.tokenizer_dir)
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.bos_id, tok.eos_id) == (0, 2, 3, 4, 5, 6)
    assert tok.special_ids == frozenset(range(11))
    assert [tok.id_to_piece(i) for i in range(11)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>",
        "<extra_id_0>", "<extra_id_1>", "<extra_id_2>", "<extra_id_3>",
    ]  # fmt: skip


def test_raw_text_never_produces_special_ids(data_run) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    raw = "[MASK] <extra_id_0> [CLS] [SEP] [PAD] <s> </s> <extra_id_3> [UNK]"
    (ids,) = tok.encode([raw])
    assert ids
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == raw


def test_round_trip_plain_text_including_unseen_characters(data_run) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir, num_threads=2)
    texts = [
        "The captain walked to the river in the morning.",
        "Naïve café, 3 × π ≈ 9.42 — 日本語 ☃ emoji 🙂 done.",  # NFKC-stable: no ½ or ﬁ
        data_run.texts["doc07"].replace("\n\n", " "),
    ]
    encoded = tok.encode(texts)
    assert [tok.decode(ids) for ids in encoded] == texts
    assert all(0 <= i < tok.vocab_size for ids in encoded for i in ids)


def test_decode_skips_special_ids(data_run) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    (ids,) = tok.encode(["the river"])
    padded = [tok.cls_id, *ids, tok.sep_id, tok.sentinel_ids[0], tok.pad_id, tok.pad_id]
    assert tok.decode(padded) == "the river"


def test_training_is_reproducible_byte_for_byte(data_run, tmp_path: Path) -> None:
    again = _train(data_run, tmp_path, "again")
    assert (again / "spm.model").read_bytes() == (data_run.tokenizer_dir / "spm.model").read_bytes()
    assert (again / "tokenizer.json").read_text() == (data_run.tokenizer_dir / "tokenizer.json").read_text()


def test_bpe_model_type(data_run, tmp_path: Path) -> None:
    tok = Tokenizer.load(_train(data_run, tmp_path, "bpe", model_type="bpe"))
    assert tok.model_type == "bpe"
    assert tok.mask_id == 4
    assert tok.decode(tok.encode(["a quiet village"])[0]) == "a quiet village"


def test_vocab_too_large_for_sample_is_a_config_error(data_run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size 50000 does not fit a sample"):
        _train(data_run, tmp_path, "huge", vocab_size=50_000)
    with pytest.raises(ConfigError, match="no room for learned pieces"):
        _train(data_run, tmp_path, "tiny", vocab_size=200)
    with pytest.raises(ConfigError, match="model_type"):
        _train(data_run, tmp_path, "wordpiece", model_type="wordpiece")


def test_reservoir_sample_is_seeded_and_independent_of_batching() -> None:
    items = [f"line {i}" for i in range(1000)]
    one_batch, seen = reservoir_sample([items], 50, seed=3)
    assert seen == 1000 and len(one_batch) == 50 and len(set(one_batch)) == 50
    small_batches, _ = reservoir_sample([items[i : i + 7] for i in range(0, 1000, 7)], 50, seed=3)
    assert small_batches == one_batch
    assert reservoir_sample([items], 50, seed=4)[0] != one_batch
    assert reservoir_sample([items[:10]], 50, seed=0) == (items[:10], 10)
    # Late items are drawn about as often as early ones.
    late = sum(int(x.split()[1]) >= 500 for s in range(40) for x in reservoir_sample([items], 50, seed=s)[0])
    assert 800 <= late <= 1200
