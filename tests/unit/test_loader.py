"""PackedSequences over a pack directory written here by hand, byte for byte as docs/contracts.md says."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from plm_core.data.loader import PackedSequences
from plm_core.errors import InputError

CLS, SEP = 2, 3


def write_pack_dir(root: Path, splits: dict[str, list[np.ndarray]], vocab_size: int) -> Path:
    """A pack directory: per split, the documents' ids each followed by [SEP], flat little-endian."""
    root.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "sep_id": SEP, "cls_id": CLS, "splits": {}}
    for split, docs in splits.items():
        tokens = np.concatenate([np.append(d, SEP) for d in docs]).astype(dtype)
        tokens.tofile(root / f"{split}.bin")
        starts = np.cumsum([0] + [len(d) + 1 for d in docs]).astype(np.int64)
        np.save(root / f"{split}.docs.npy", starts, allow_pickle=False)
        meta["splits"][split] = {"tokens": int(len(tokens)), "docs": len(docs)}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    # Token ids 10, 11, ... so every window's content is predictable from its index.
    docs = [np.arange(10, 30), np.arange(30, 43)]  # 20 + 1 and 13 + 1 tokens -> 35 in all
    return write_pack_dir(tmp_path / "pack", {"train": docs, "validation": [np.arange(10, 14)]}, 100)


def test_windows_are_cls_consecutive_tokens_sep(pack: Path):
    flat = np.fromfile(pack / "train.bin", dtype="<u2").astype(np.int64)
    ds = PackedSequences(pack, "train", seq_len=10)  # windows of 8 tokens
    assert len(ds) == 35 // 8 == 4
    for i in range(len(ds)):
        item = ds[i]
        assert item.dtype == torch.long and item.shape == (10,)
        assert item[0] == CLS and item[-1] == SEP
        assert item[1:-1].tolist() == flat[i * 8 : (i + 1) * 8].tolist()
    assert ds[2][1:-1].tolist() == [26, 27, 28, 29, SEP, 30, 31, 32]  # crosses a document boundary
    with pytest.raises(IndexError):
        ds[4]


def test_uint32_packs_read_the_same(tmp_path: Path):
    pack = write_pack_dir(tmp_path / "big", {"train": [np.array([70000, 70001, 5])]}, vocab_size=70010)
    assert PackedSequences(pack, "train", seq_len=5)[0].tolist() == [CLS, 70000, 70001, 5, SEP]


def test_pickles_without_the_memmap(pack: Path):
    ds = PackedSequences(pack, "train", seq_len=10)
    first = ds[0]  # opens the memmap
    blob = pickle.dumps(ds)
    assert len(blob) < 1000
    assert torch.equal(pickle.loads(blob)[0], first)


def test_too_short_split_is_an_input_error(pack: Path):
    with pytest.raises(InputError, match=r"validation\.bin: has 5 tokens, fewer than one sequence"):
        PackedSequences(pack, "validation", seq_len=10)
    with pytest.raises(InputError, match="no split 'test'"):
        PackedSequences(pack, "test", seq_len=10)
    with pytest.raises(InputError, match="meta.json: missing"):
        PackedSequences(pack.parent, "train", seq_len=10)
