from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_core.config import PackConfig
from plm_core.data.pack import encode_documents, pack, text_chunks, token_dtype
from plm_core.data.shards import shard_files
from plm_core.errors import ConfigError
from plm_core.tokenizer import Tokenizer

FILES = ("meta.json", "train.bin", "train.docs.npy", "validation.bin", "validation.docs.npy")


def _pack(data_run, tmp_path: Path, name: str, workers: int) -> Path:
    out = tmp_path / name
    out.mkdir()
    pack(data_run.clean_dir, data_run.tokenizer_dir, PackConfig(num_workers=workers, batch_docs=3), out)
    return out


def _split_docs(clean_dir: Path, split: str) -> list[str]:
    return pa.concat_tables([pq.read_table(p) for p in shard_files(clean_dir / split)])["text"].to_pylist()


@pytest.fixture(scope="module")
def data_packed(data_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pack(data_run, tmp_path_factory.mktemp("pack"), "one_worker", workers=1)


def test_output_follows_the_contract_and_decodes_back(data_run, data_packed: Path) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    meta = json.loads((data_packed / "meta.json").read_text())
    assert sorted(p.name for p in data_packed.iterdir()) == sorted(FILES)
    assert set(meta) == {"dtype", "vocab_size", "sep_id", "cls_id", "splits"}
    assert (meta["dtype"], meta["vocab_size"], meta["sep_id"], meta["cls_id"]) == ("uint16", 420, 3, 2)
    for split in ("train", "validation"):
        docs = _split_docs(data_run.clean_dir, split)
        ids = np.fromfile(data_packed / f"{split}.bin", dtype="<u2")
        offsets = np.load(data_packed / f"{split}.docs.npy", allow_pickle=False)
        assert offsets.dtype == np.int64
        assert meta["splits"][split] == {"tokens": len(ids), "docs": len(docs)}
        assert len(offsets) == len(docs) + 1 and offsets[0] == 0 and offsets[-1] == len(ids)
        assert (ids[offsets[1:] - 1] == tok.sep_id).all()
        assert (ids == tok.sep_id).sum() == len(docs)
        for i, doc in enumerate(docs):
            # nmt_nfkc turns newlines and space runs into single spaces; nothing else changes.
            assert tok.decode(ids[offsets[i] : offsets[i + 1]]) == " ".join(doc.split())
    assert meta["splits"]["validation"]["docs"] >= 1


def test_bytes_do_not_depend_on_worker_count(data_run, data_packed: Path, tmp_path: Path) -> None:
    # The fixture's clean output has several shards and row groups, so two workers share tasks.
    assert sum(pq.ParquetFile(p).num_row_groups for p in shard_files(data_run.clean_dir / "train")) >= 4
    two = _pack(data_run, tmp_path, "two_workers", workers=2)
    for name in FILES:
        assert (two / name).read_bytes() == (data_packed / name).read_bytes(), name


def test_chunked_encoding_equals_whole_document_encoding(data_run, data_text) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    book = "\n\n".join(data_text(seed, paragraphs=5) for seed in range(12))
    dtype = token_dtype(tok.vocab_size)
    ids, lengths = encode_documents([book, "short one"], tok, dtype, chunk_chars=300)
    whole = tok.encode([book, "short one"])
    assert lengths.tolist() == [len(whole[0]) + 1, len(whole[1]) + 1]
    assert ids.tolist() == whole[0] + [tok.sep_id] + whole[1] + [tok.sep_id]


def test_text_chunks_cut_at_whitespace_and_lose_nothing() -> None:
    text = ("word " * 50 + "\n\n") * 20 + "x" * 700
    chunks = list(text_chunks(text, 256))
    assert "".join(chunks) == text
    assert all(len(c) <= 256 for c in chunks)
    assert all(c[0].isspace() for c in chunks[1:-3])  # cuts land on whitespace, not inside words
    assert list(text_chunks("short", 256)) == ["short"]


def test_token_dtype_widens_past_uint16() -> None:
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")


@pytest.mark.slow  # starts a local Ray instance: 15-40 s on the 2-core machine
def test_ray_backend_writes_the_same_bytes(data_run, data_packed: Path, tmp_path: Path, monkeypatch) -> None:
    """With RAY_ADDRESS set, pack runs Ray tasks (here on a local Ray started for the test)."""
    import ray

    monkeypatch.setenv("RAY_ADDRESS", "local")
    out = tmp_path / "ray"
    out.mkdir()
    try:
        pack(data_run.clean_dir, data_run.tokenizer_dir, PackConfig(num_workers=2, batch_docs=3), out)
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    for name in FILES:
        assert (out / name).read_bytes() == (data_packed / name).read_bytes(), name


def test_unknown_backend_is_a_config_error(data_run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend"):
        pack(data_run.clean_dir, data_run.tokenizer_dir, PackConfig(backend="threads"), tmp_path)
