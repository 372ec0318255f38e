"""NSP/SOP pairs from a packed split: label balance, where the segments come from, the layout,
and that a tiny BertForPreTraining learns SOP on one batch."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.errors import ConfigError
from plm_core.models.encoder import BertForPreTraining
from plm_core.objectives.registry import build_collator
from plm_core.objectives.sentence_order import SentencePairs

torch.set_num_threads(1)

PAD, CLS, SEP, MASK = 0, 2, 3, 4
FIRST_ID = 10  # token ids encode their position in the split: id = FIRST_ID + position
SEQ_LEN = 40


def _write_pack(root: Path, doc_lengths: list[int]) -> Path:
    """A pack directory (docs/contracts.md) whose every non-[SEP] token id names its position."""
    offsets = np.concatenate([[0], np.cumsum(np.asarray(doc_lengths) + 1)]).astype(np.int64)
    tokens = FIRST_ID + np.arange(offsets[-1], dtype=np.int64)
    tokens[offsets[1:] - 1] = SEP
    assert tokens.max() < 65536
    tokens.astype("<u2").tofile(root / "train.bin")
    np.save(root / "train.docs.npy", offsets)
    meta = {
        "dtype": "uint16",
        "vocab_size": 65536,
        "sep_id": SEP,
        "cls_id": CLS,
        "splits": {"train": {"tokens": int(offsets[-1]), "docs": len(doc_lengths)}},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 120, size=400).tolist()
    lengths[5:8] = [0, 1, 0]  # documents too short to split (or empty) must be skipped
    root = _write_pack(tmp_path_factory.mktemp("pack"), lengths)
    return root, np.load(root / "train.docs.npy")


def _expected_chunk(index: int, offsets: np.ndarray) -> list[int]:
    """The chunk example ``index`` is cut from, by the rule in the module docstring, one example
    at a time in plain Python."""
    budget, anchor = SEQ_LEN - 3, index * (SEQ_LEN - 2)
    doc = int(np.searchsorted(offsets, anchor, side="right")) - 1
    while offsets[doc + 1] - 1 - offsets[doc] < 2:  # not splittable: the next document
        doc = (doc + 1) % (len(offsets) - 1)
    start, end = int(offsets[doc]), int(offsets[doc + 1]) - 1
    chunk_start = min(max(anchor, start), max(start, end - budget))
    return list(range(chunk_start, min(chunk_start + budget, end)))


def _segments(batch: dict[str, torch.Tensor], row: int) -> tuple[list[int], list[int]]:
    """(first, second) segment token positions of a row, checking the layout on the way."""
    ids = batch["input_ids"][row].tolist()
    types = batch["token_type_ids"][row].tolist()
    attend = batch["attention_mask"][row].tolist()
    n = sum(attend)
    assert attend == [1] * n + [0] * (SEQ_LEN - n)
    assert ids[n:] == [PAD] * (SEQ_LEN - n)
    seps = [i for i, t in enumerate(ids) if t == SEP]
    assert ids[0] == CLS and len(seps) == 2 and seps[1] == n - 1
    first, second = ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]
    assert first and second
    assert types == [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1) + [0] * (SEQ_LEN - n)
    return [t - FIRST_ID for t in first], [t - FIRST_ID for t in second]


def _doc_of(position: int, offsets: np.ndarray) -> int:
    return int(np.searchsorted(offsets, position, side="right")) - 1


def _many(pairs: SentencePairs, n: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(pairs), (n,), generator=g)
    return indices, [pairs.batch(chunk, g) for chunk in indices.split(500)]


def test_sop_negatives_are_exactly_the_swapped_positives(pack) -> None:
    root, offsets = pack
    pairs = SentencePairs(root, "train", SEQ_LEN, kind="sop", pad_id=PAD)
    indices, batches = _many(pairs, 10_000, seed=0)
    labels = torch.cat([b["sentence_labels"] for b in batches])
    assert abs(labels.float().mean().item() - 0.5) < 0.02
    for i, (index, label) in enumerate(zip(indices.tolist(), labels.tolist(), strict=True)):
        batch, row = batches[i // 500], i % 500
        first, second = _segments(batch, row)
        natural = second + first if label else first + second
        assert natural == _expected_chunk(index, offsets)


def test_nsp_next_pairs_are_consecutive_and_random_ones_come_from_another_document(pack) -> None:
    root, offsets = pack
    pairs = SentencePairs(root, "train", SEQ_LEN, kind="nsp", pad_id=PAD)
    indices, batches = _many(pairs, 10_000, seed=1)
    labels = torch.cat([b["sentence_labels"] for b in batches])
    assert abs(labels.float().mean().item() - 0.5) < 0.02
    for i, (index, label) in enumerate(zip(indices.tolist(), labels.tolist(), strict=True)):
        first, second = _segments(batches[i // 500], i % 500)
        chunk = _expected_chunk(index, offsets)
        if label == 0:  # IsNext: A then B, consecutive text of one document
            assert first + second == chunk
            continue
        assert first == chunk[: len(first)]  # A as for IsNext
        other = _doc_of(second[0], offsets)
        assert other != _doc_of(first[0], offsets)
        assert second == list(range(second[0], second[0] + len(second)))  # a contiguous span...
        assert _doc_of(second[-1], offsets) == other  # ...inside that one document
        other_len = int(offsets[other + 1] - offsets[other]) - 1
        assert len(second) == min(len(chunk) - len(first), other_len)


def test_same_generator_state_gives_same_pairs_and_pickling_skips_tokens(pack) -> None:
    root, _ = pack
    pairs = SentencePairs(root, "train", SEQ_LEN, kind="nsp", pad_id=PAD)
    indices = torch.arange(32)
    a = pairs.batch(indices, torch.Generator().manual_seed(3))
    b = pairs.batch(indices, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    restored = pickle.loads(pickle.dumps(pairs))
    assert restored._tokens is None
    c = restored.batch(indices, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_bad_arguments(pack, tmp_path: Path) -> None:
    root, _ = pack
    with pytest.raises(ConfigError, match="sentence objective"):
        SentencePairs(root, "train", SEQ_LEN, kind="next", pad_id=PAD)
    lonely = _write_pack(tmp_path, [50])
    with pytest.raises(Exception, match="at least two"):
        SentencePairs(lonely, "train", SEQ_LEN, kind="nsp", pad_id=PAD)
    SentencePairs(lonely, "train", SEQ_LEN, kind="sop", pad_id=PAD)  # SOP needs one document only


def test_bert_for_pretraining_overfits_one_sop_batch(tmp_path: Path) -> None:
    """MLM + SOP on one fixed batch: both heads and the segment embeddings can fit it."""
    rng = np.random.default_rng(1)
    root = _write_pack(tmp_path, rng.integers(10, 30, size=12).tolist())
    pairs = SentencePairs(root, "train", 24, kind="sop", pad_id=PAD)
    g = torch.Generator().manual_seed(0)
    batch = pairs.batch(torch.arange(8), g)
    vocab = FIRST_ID + int(np.load(root / "train.docs.npy")[-1])
    meta = {"mask_id": MASK, "vocab_size": vocab, "special_ids": list(range(FIRST_ID))}
    batch.update(
        build_collator("mlm", tokenizer_meta=meta, cfg=PretrainConfig(), word_start=None)(
            batch["input_ids"], g
        )
    )
    assert batch["sentence_labels"].sum() not in (0, 8)  # both classes present

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        max_position=24, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = BertForPreTraining(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if out["loss"].item() < 0.05:
            break
    assert out["loss"].item() < 0.05
    assert out["sentence_loss"].item() < 0.05
