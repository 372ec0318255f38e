"""Pack: cleaned documents -> flat token-id files with document offsets (docs/contracts.md).

Work is cut into one task per Parquet row group of the clean output (about 4 MB of text each) and
spread over a process pool, or Ray tasks when ``RAY_ADDRESS`` names a cluster
(``plm_core.data.parallel``); results come back in task order and only the parent writes, so the
bytes on disk do not depend on the number of workers or the backend. Workers read their row group
themselves (tasks are only a path and an index), load the tokenizer once, and encode long
documents in chunks cut at paragraph breaks, so memory is bounded by the chunk size instead of
growing with a 2 MB book's lattice. SentencePiece never forms a piece across whitespace, so the
ids are those of encoding the book whole, up to unigram Viterbi near-ties that float rounding of
the running path score breaks differently (76 of 25M tokens on the Gutenberg corpus, e.g.
"▁ Dear" for "▁De ar"): a chunk's ids never depend on how much text came before it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plm_core.config import PackConfig
from plm_core.data.parallel import ordered_map, resolve_backend
from plm_core.data.shards import shard_files
from plm_core.errors import ConfigError, InputError
from plm_core.tokenizer import Tokenizer

SPLITS = ("train", "validation")
META_FILE = "meta.json"
CHUNK_CHARS = 32_768
_worker: dict[str, Any] = {}


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of at most ``size`` characters, preferring paragraph breaks, then
    line breaks or spaces; only a run of ``size`` characters without whitespace is cut hard."""
    start = 0
    while len(text) - start > size:
        end = start + size
        cut = text.rfind("\n\n", start + 1, end)
        if cut <= start:
            cut = max(text.rfind("\n", start + 1, end), text.rfind(" ", start + 1, end))
        if cut <= start:
            cut = end
        yield text[start:cut]
        start = cut
    yield text[start:]


def _init_worker(tokenizer_dir: str, batch_docs: int) -> None:
    tok = Tokenizer.load(tokenizer_dir)
    _worker.update(tok=tok, dtype=token_dtype(tok.vocab_size), batch_docs=batch_docs)


def encode_documents(
    docs: list[str], tok: Tokenizer, dtype: np.dtype, chunk_chars: int = CHUNK_CHARS
) -> tuple[np.ndarray, np.ndarray]:
    """Ids of ``docs`` laid end to end, each document followed by one ``sep_id``, and the length of
    each document including its separator."""
    chunks: list[str] = []
    owner: list[int] = []
    for d, doc in enumerate(docs):
        for chunk in text_chunks(doc, chunk_chars):
            chunks.append(chunk)
            owner.append(d)
    encoded = tok.encode(chunks)
    chunk_tokens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    doc_tokens = np.bincount(np.asarray(owner, dtype=np.int64), weights=chunk_tokens, minlength=len(docs))
    lengths = doc_tokens.astype(np.int64) + 1
    # One C-level pass over the ids with each document's [SEP] chained in after its last chunk:
    # converting the per-chunk lists one by one and scattering them around the separators cost
    # ~10% of pack's time next to SentencePiece itself.
    ends = np.cumsum(np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(docs)))
    sep = [tok.sep_id]
    laid_out = itertools.chain.from_iterable(
        itertools.chain(itertools.chain.from_iterable(encoded[start:end]), sep)
        for start, end in zip(np.concatenate([[0], ends[:-1]]).tolist(), ends.tolist(), strict=True)
    )
    return np.fromiter(laid_out, dtype=dtype, count=int(lengths.sum())), lengths


def _encode_task(task: tuple[str, str, int]) -> tuple[str, np.ndarray, np.ndarray, int]:
    """Encode one row group of one split, ``batch_docs`` documents per SentencePiece call."""
    split, path, row_group = task
    texts = pq.ParquetFile(path).read_row_group(row_group, columns=["text"])["text"]
    nbytes = pc.sum(pc.binary_length(texts)).as_py() or 0
    docs = texts.to_pylist()
    tok, dtype, step = _worker["tok"], _worker["dtype"], _worker["batch_docs"]
    parts = [encode_documents(docs[i : i + step], tok, dtype) for i in range(0, len(docs), step)]
    if not parts:
        return split, np.empty(0, dtype=dtype), np.empty(0, dtype=np.int64), nbytes
    return split, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), nbytes


def _encoded(
    tasks: list[tuple[str, str, int]], cfg: PackConfig, tokenizer_dir: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray, int]]:
    """Results of every task, in task order, from a process pool, Ray tasks, or this process."""
    try:
        yield from ordered_map(
            _encode_task,
            tasks,
            workers=cfg.num_workers,
            initializer=_init_worker,
            initargs=(tokenizer_dir, cfg.batch_docs),
            backend=cfg.backend,
        )
    finally:
        _worker.clear()


def _tasks(clean_dir: Path) -> list[tuple[str, str, int]]:
    tasks = []
    for split in SPLITS:
        split_dir = clean_dir / split
        if not split_dir.is_dir():
            raise InputError(split_dir, "does not exist (not a clean stage output?)")
        for path in shard_files(split_dir):
            tasks += [(split, str(path), rg) for rg in range(pq.ParquetFile(path).num_row_groups)]
    return tasks


def pack(clean_dir: Path, tokenizer_dir: Path, cfg: PackConfig, out_dir: Path) -> dict[str, Any]:
    """Tokenize both splits into ``{split}.bin`` + ``{split}.docs.npy`` and write ``meta.json``."""
    if cfg.num_workers < 1 or cfg.batch_docs < 1:
        raise ConfigError(f"num_workers and batch_docs must be >= 1, got {cfg.num_workers}, {cfg.batch_docs}")
    resolve_backend(cfg.backend)  # a typo in the backend fails before any work
    clean_dir, out_dir = Path(clean_dir), Path(out_dir)
    tok = Tokenizer.load(tokenizer_dir)
    dtype = token_dtype(tok.vocab_size)
    tasks = _tasks(clean_dir)
    lengths: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    bytes_in = 0
    with ExitStack() as stack:
        files = {split: stack.enter_context(open(out_dir / f"{split}.bin", "wb")) for split in SPLITS}
        for split, ids, doc_lengths, nbytes in _encoded(tasks, cfg, str(tokenizer_dir)):
            files[split].write(ids.tobytes())
            lengths[split].append(doc_lengths)
            bytes_in += nbytes
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        per_doc = np.concatenate(lengths[split]) if lengths[split] else np.empty(0, dtype=np.int64)
        offsets = np.zeros(per_doc.size + 1, dtype=np.int64)
        np.cumsum(per_doc, out=offsets[1:])
        np.save(out_dir / f"{split}.docs.npy", offsets)
        splits[split] = {"tokens": int(offsets[-1]), "docs": int(per_doc.size)}
    meta = {
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "sep_id": tok.sep_id,
        "cls_id": tok.cls_id,
        "splits": splits,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return {**splits, "bytes_in": bytes_in, "dtype": dtype.name}
