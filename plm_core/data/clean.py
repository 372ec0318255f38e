"""Clean: normalise text, strip boilerplate, filter by length, drop exact duplicates, split train/validation.

Two passes over the data, one row group in memory at a time. Pass 1 normalises every document,
applies the length filter and writes the survivors to a scratch directory while keeping only a
16-byte key per document. Between the passes the duplicate winners (the smallest
``(source, id)`` of each key) and the split are decided on those keys alone; pass 2 routes the
scratch rows into ``train/``, ``validation/`` and ``rejects.parquet``. Deciding first is what
makes the kept twin independent of the order the shards happen to be read in.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plm_core.config import CleanConfig
from plm_core.data.gutenberg import strip_gutenberg
from plm_core.data.shards import DOC_SCHEMA, ShardWriter, shard_files
from plm_core.errors import ConfigError, InputError

REJECT_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())]
)
SPLITS = ("train", "validation")
_TRAIN, _VALIDATION, _DUPLICATE = 0, 1, 2
# RE2 syntax (pyarrow): C0 and C1 control characters except \t and \n, and the byte-order mark.
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\x{feff}]"
# Unicode whitespace that survives normalisation (Python's str.isspace minus the control characters).
_UNICODE_SPACE = r"[\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"


def normalize_batch(texts: pa.Array | pa.ChunkedArray, strip_boilerplate: bool) -> tuple[pa.Array, int]:
    """Normalise a batch of documents; return the new texts and how many had Gutenberg boilerplate.

    Line endings, NFC, control characters, runs of spaces/tabs, trailing spaces, 3+ blank lines.
    The regex steps run in Arrow over the whole batch; NFC and boilerplate stripping run per
    document in Python because CPython's NFC has an ASCII quick check that is ~10x faster than
    Arrow's utf8proc on mostly-ASCII books, and the boilerplate markers need real regex logic.
    """
    texts = pc.replace_substring(texts, "\r\n", "\n")
    texts = pc.replace_substring(texts, "\r", "\n")
    docs = texts.to_pylist()
    stripped = 0
    if strip_boilerplate:
        for i, doc in enumerate(docs):
            docs[i], found = strip_gutenberg(doc)
            stripped += found
    texts = pa.array([unicodedata.normalize("NFC", d) for d in docs], pa.string())
    texts = pc.replace_substring_regex(texts, _CONTROL, "")
    texts = pc.replace_substring_regex(texts, r"[ \t]{2,}", " ")
    texts = pc.replace_substring_regex(texts, r"[ \t]+\n", "\n")
    texts = pc.utf8_trim_whitespace(texts)
    texts = pc.replace_substring_regex(texts, r"\n{4,}", "\n\n\n")
    return texts, stripped


def dedup_keys(texts: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """Exact-duplicate keys of normalised texts: a hash of each text lowercased with every whitespace
    run made one space (the same as ``" ".join(text.lower().split())``).

    Done in Arrow and hashed straight from the Arrow buffer: after ``normalize_batch`` the only
    whitespace left is space, tab, newline and the rare Unicode separators, so two plain
    replacements and one regex that matches only at runs suffice, where a ``\\s+`` regex would
    rewrite every single space (3-5x slower than this, and so is the Python split/join).
    """
    s = pc.utf8_lower(texts)
    s = pc.replace_substring_regex(s, _UNICODE_SPACE, " ")
    s = pc.replace_substring(pc.replace_substring(s, "\n", " "), "\t", " ")
    s = pc.utf8_trim(pc.replace_substring_regex(s, " {2,}", " "), " ")
    s = s.combine_chunks() if isinstance(s, pa.ChunkedArray) else s
    if len(s) == 0:
        return []
    offset_type = np.int64 if pa.types.is_large_string(s.type) else np.int32
    offsets = np.frombuffer(s.buffers()[1], dtype=offset_type)[s.offset : s.offset + len(s) + 1]
    data = memoryview(s.buffers()[2])
    return [hashlib.blake2b(data[a:b], digest_size=16).digest() for a, b in itertools.pairwise(offsets)]


def split_value(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the document id and seed: a document never changes split
    when other documents are added or removed."""
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class _Candidates:
    """What pass 1 remembers about each document that survived the length filter, in read order."""

    sources: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)


def _check(cfg: CleanConfig) -> None:
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {cfg.validation_fraction}")
    if cfg.min_chars < 0 or cfg.max_chars < cfg.min_chars:
        raise ConfigError(f"need 0 <= min_chars <= max_chars, got {cfg.min_chars} and {cfg.max_chars}")
    if cfg.target_shard_bytes <= 0:
        raise ConfigError(f"target_shard_bytes must be positive, got {cfg.target_shard_bytes}")


def _row_groups(files: list[Path]) -> Iterator[pa.Table]:
    """Each row group of each file in turn: the unit that bounds memory."""
    for path in files:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=["id", "source", "text"])


def _reject(writer: ShardWriter, table: pa.Table, mask: np.ndarray, reason: str) -> None:
    if mask.any():
        rows = table.filter(pa.array(mask))
        n = rows.num_rows
        writer.write(
            {"id": rows["id"], "source": rows["source"], "reason": [reason] * n, "duplicate_of": [None] * n}
        )


def _first_pass(
    files: list[Path], cfg: CleanConfig, scratch: ShardWriter, rejects: ShardWriter, counts: Counter[str]
) -> _Candidates:
    cands = _Candidates()
    for table in _row_groups(files):
        counts["records_in"] += table.num_rows
        counts["bytes_in"] += pc.sum(pc.binary_length(table["text"])).as_py() or 0
        texts, stripped = normalize_batch(table["text"], cfg.strip_gutenberg)
        counts["gutenberg_stripped"] += stripped
        table = table.set_column(table.schema.get_field_index("text"), "text", texts)
        lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
        too_short, too_long = lengths < cfg.min_chars, lengths > cfg.max_chars
        _reject(rejects, table, too_short, "too_short")
        _reject(rejects, table, too_long, "too_long")
        counts["too_short"] += int(too_short.sum())
        counts["too_long"] += int(too_long.sum())
        kept = table.filter(pa.array(~(too_short | too_long)))
        scratch.write(kept)
        cands.sources += kept["source"].to_pylist()
        cands.ids += kept["id"].to_pylist()
        if cfg.exact_dedup:
            cands.keys += dedup_keys(kept["text"])
    return cands


def _decide(cands: _Candidates, cfg: CleanConfig) -> tuple[np.ndarray, dict[int, str]]:
    """Route every candidate: train, validation, or duplicate (with the id of its kept twin)."""
    n = len(cands.ids)
    route = np.full(n, _TRAIN, dtype=np.int8)
    duplicate_of: dict[int, str] = {}
    if cfg.exact_dedup:
        winner: dict[bytes, int] = {}
        for i, key in enumerate(cands.keys):
            j = winner.get(key)
            if j is None or (cands.sources[i], cands.ids[i]) < (cands.sources[j], cands.ids[j]):
                winner[key] = i
        for i, key in enumerate(cands.keys):
            if winner[key] != i:
                route[i] = _DUPLICATE
                duplicate_of[i] = cands.ids[winner[key]]
    kept = np.flatnonzero(route != _DUPLICATE)
    values = np.array([split_value(cands.ids[i], cfg.split_seed) for i in kept])
    route[kept[values < cfg.validation_fraction]] = _VALIDATION
    if len(kept) >= 2:
        # Evaluation needs a validation document and training needs a train one, whatever the
        # fraction: move the document closest to the boundary.
        if not (route[kept] == _VALIDATION).any():
            route[kept[np.argmin(values)]] = _VALIDATION
        if not (route[kept] == _TRAIN).any():
            route[kept[np.argmax(values)]] = _TRAIN
    return route, duplicate_of


def _second_pass(
    scratch_files: list[Path],
    route: np.ndarray,
    duplicate_of: dict[int, str],
    writers: dict[int, ShardWriter],
    rejects: ShardWriter,
) -> int:
    """Write every scratch row where ``route`` sends it; return the bytes of text kept."""
    start, bytes_out = 0, 0
    for table in _row_groups(scratch_files):
        rows = route[start : start + table.num_rows]
        for code, writer in writers.items():
            part = table.filter(pa.array(rows == code))
            writer.write(part)
            bytes_out += pc.sum(pc.binary_length(part["text"])).as_py() or 0
        dups = np.flatnonzero(rows == _DUPLICATE)
        if len(dups):
            picked = table.take(pa.array(dups))
            rejects.write(
                {
                    "id": picked["id"],
                    "source": picked["source"],
                    "reason": ["exact_duplicate"] * len(dups),
                    "duplicate_of": [duplicate_of[start + int(i)] for i in dups],
                }
            )
        start += table.num_rows
    return bytes_out


def clean(ingest_dir: Path, cfg: CleanConfig, out_dir: Path) -> dict[str, Any]:
    """Clean the ingest shards into ``train/``, ``validation/`` and ``rejects.parquet``; return counts."""
    _check(cfg)
    files = shard_files(ingest_dir)
    if not files:
        raise InputError(ingest_dir, "no part-*.parquet shards: not an ingest output")
    out_dir = Path(out_dir)
    counts: Counter[str] = Counter()
    with (
        tempfile.TemporaryDirectory(prefix=".clean-scratch-", dir=out_dir.parent) as scratch_dir,
        ShardWriter(out_dir, REJECT_SCHEMA, template="rejects.parquet", write_empty=True) as rejects,
    ):
        with ShardWriter(scratch_dir, DOC_SCHEMA, compression="none") as scratch:
            cands = _first_pass(files, cfg, scratch, rejects, counts)
        route, duplicate_of = _decide(cands, cfg)
        writers = {
            code: ShardWriter(out_dir / name, DOC_SCHEMA, max_file_bytes=cfg.target_shard_bytes)
            for code, name in zip((_TRAIN, _VALIDATION), SPLITS, strict=True)
        }
        bytes_out = _second_pass(shard_files(scratch_dir), route, duplicate_of, writers, rejects)
        written = {
            name: writers[code].close() for code, name in zip((_TRAIN, _VALIDATION), SPLITS, strict=True)
        }
    rejected = {r: counts[r] for r in ("too_short", "too_long") if counts[r]}
    if duplicate_of:
        rejected["exact_duplicate"] = len(duplicate_of)
    train, validation = int((route == _TRAIN).sum()), int((route == _VALIDATION).sum())
    if counts["records_in"] != train + validation + sum(rejected.values()):
        raise AssertionError(
            f"clean lost documents: {counts['records_in']} in, {train}+{validation}+{rejected}"
        )
    return {
        "records_in": counts["records_in"],
        "train": train,
        "validation": validation,
        "rejected": dict(sorted(rejected.items())),
        "bytes_in": counts["bytes_in"],
        "bytes_out": bytes_out,
        "gutenberg_stripped": counts["gutenberg_stripped"],
        "shards": {name: len(paths) for name, paths in written.items()},
    }
