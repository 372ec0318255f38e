"""Clean: normalise, filter (lines, length, quality), deduplicate (exact and near) and split.

Two passes over the data. Pass 1 is one task per ingest row group, spread over processes (or Ray
tasks, ``plm_core.data.parallel``): a task normalises its documents, drops symbol-only lines,
applies the length and Gopher quality rules, writes the survivors to a scratch file and returns
only what dedup needs per document (id, source, a 16-byte exact key, LSH band hashes, the MinHash
signature). The parent collects these in task order, so every decision is independent of which
worker ran what. Between the passes, dedup clusters the whole corpus on those keys and keeps the
smallest ``(source, id)`` of each cluster, and the train/validation split is fixed by id hash;
pass 2 routes the scratch rows into ``train/``, ``validation/`` and ``rejects.parquet``.

Memory: each worker holds one row group; the parent holds about ``16 + 8 x bands`` bytes plus the
id and source per surviving document (signatures wait in a scratch file), never the text.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from plm_core.config import CleanConfig
from plm_core.data.dedup import (
    EMPTY,
    EXACT,
    KEPT,
    Duplicates,
    band_hashes,
    clusters,
    decide_duplicates,
    dedup_keys,
    lsh_params,
    minhash_signatures,
)
from plm_core.data.normalize import normalize_batch
from plm_core.data.parallel import ordered_map
from plm_core.data.quality import RULES, filter_lines, quality_reasons
from plm_core.data.shards import DOC_SCHEMA, REJECT_SCHEMA, REJECTS_FILE, ShardWriter, shard_files
from plm_core.errors import ConfigError, InputError

SPLITS = ("train", "validation")
CLUSTERS_FILE = "duplicate_clusters.parquet"
CLUSTER_SCHEMA = pa.schema(
    [
        ("cluster_id", pa.int64()),
        ("kind", pa.string()),  # "exact" (all members equal after normalisation) or "near"
        ("kept_id", pa.string()),
        ("member_ids", pa.list_(pa.string())),  # every member, the kept one first
        ("size", pa.int64()),
    ]
)
_TRAIN, _VALIDATION, _DUPLICATE = 0, 1, 2
_SCRATCH = ".scratch"
_SIGNATURES = "signatures.u64"
_FILTER_REASONS = frozenset(("too_short", "too_long", *RULES))


def split_value(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the document id and seed: a document never changes split
    when other documents are added or removed."""
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check(cfg: CleanConfig) -> None:
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {cfg.validation_fraction}")
    if cfg.min_chars < 0 or cfg.max_chars < cfg.min_chars:
        raise ConfigError(f"need 0 <= min_chars <= max_chars, got {cfg.min_chars} and {cfg.max_chars}")
    if cfg.target_shard_bytes <= 0:
        raise ConfigError(f"target_shard_bytes must be positive, got {cfg.target_shard_bytes}")
    if cfg.num_workers < 1:
        raise ConfigError(f"num_workers must be >= 1, got {cfg.num_workers}")
    if cfg.near_dedup and not (0.0 < cfg.near_dedup_threshold <= 1.0):
        raise ConfigError(f"near_dedup_threshold must be in (0, 1], got {cfg.near_dedup_threshold}")
    if cfg.near_dedup and (cfg.near_dedup_ngram < 1 or cfg.near_dedup_num_perm < 2):
        raise ConfigError("near_dedup_ngram must be >= 1 and near_dedup_num_perm >= 2")
    if len(cfg.max_top_ngram_char_fraction) != 3 or len(cfg.max_duplicate_ngram_char_fraction) != 6:
        raise ConfigError(
            "max_top_ngram_char_fraction needs 3 values (n = 2..4) and "
            "max_duplicate_ngram_char_fraction 6 values (n = 5..10)"
        )


@dataclass
class _TaskResult:
    """What pass 1 returns for one row group: rejects, and per surviving document its dedup state."""

    rejects: dict[str, list[str | None]]
    ids: pa.Array
    sources: pa.Array
    keys: np.ndarray | None  # [k, 16] uint8
    signatures: np.ndarray | None  # [k, num_perm] uint64
    bands: np.ndarray | None  # [k, bands] uint64
    scratch: str | None  # the survivors' Parquet file, None when nothing survived
    counts: Counter[str]


def _first_pass_task(task: tuple[int, str, int, CleanConfig, str]) -> _TaskResult:
    """Normalise, filter and hash one row group; write its survivors to ``scratch/part-<index>``."""
    index, path, row_group, cfg, scratch_dir = task
    table = pq.ParquetFile(path).read_row_group(row_group, columns=["id", "source", "text"])
    counts: Counter[str] = Counter(records_in=table.num_rows)
    counts["bytes_in"] = pc.sum(pc.binary_length(table["text"])).as_py() or 0
    texts, counts["gutenberg_stripped"] = normalize_batch(table["text"], cfg.strip_gutenberg)
    texts, counts["lines_in"], counts["lines_symbol"] = filter_lines(texts, cfg.max_line_symbol_fraction)
    lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    reasons: list[str | None] = [
        "too_short" if n < cfg.min_chars else "too_long" if n > cfg.max_chars else None for n in lengths
    ]
    if cfg.quality_filter:
        passing = np.array([r is None for r in reasons], dtype=bool)
        for i, reason in zip(
            np.flatnonzero(passing), quality_reasons(texts.filter(pa.array(passing)), cfg), strict=True
        ):
            reasons[i] = reason
    kept = pa.array([r is None for r in reasons])
    rejected = [i for i, r in enumerate(reasons) if r is not None]
    counts.update(r for r in reasons if r is not None)
    picked = table.take(pa.array(rejected, pa.int64()))
    rejects = {
        "id": picked["id"].to_pylist(),
        "source": picked["source"].to_pylist(),
        "reason": [reasons[i] for i in rejected],
        "duplicate_of": [None] * len(rejected),
    }
    survivors = table.set_column(2, "text", texts).filter(kept)
    scratch = None
    if survivors.num_rows:
        scratch = str(Path(scratch_dir) / f"part-{index:05d}.parquet")
        # Complete or absent under its name, like every shard (a killed run leaves only *.tmp).
        pq.write_table(survivors, scratch + ".tmp", compression="none")
        os.replace(scratch + ".tmp", scratch)
    keys = signatures = bands = None
    if cfg.exact_dedup:
        keys = np.frombuffer(b"".join(dedup_keys(survivors["text"])), dtype=np.uint8).reshape(-1, 16)
    if cfg.near_dedup:
        signatures = minhash_signatures(
            survivors["text"], cfg.near_dedup_num_perm, cfg.near_dedup_ngram, cfg.near_dedup_seed
        )
        bands = band_hashes(signatures, *lsh_params(cfg.near_dedup_threshold, cfg.near_dedup_num_perm))
    return _TaskResult(
        rejects,
        survivors["id"].combine_chunks(),
        survivors["source"].combine_chunks(),
        keys,
        signatures,
        bands,
        scratch,
        counts,
    )


def _tasks(
    files: list[Path], cfg: CleanConfig, scratch: Path
) -> list[tuple[int, str, int, CleanConfig, str]]:
    tasks = []
    for path in files:
        for rg in range(pq.ParquetFile(path).num_row_groups):
            tasks.append((len(tasks), str(path), rg, cfg, str(scratch)))
    return tasks


@dataclass
class _Collected:
    """Pass 1's results over the whole corpus, in read order."""

    ids: pa.Array
    sources: pa.Array
    keys: np.ndarray | None
    bands: np.ndarray | None
    has_words: np.ndarray | None
    signatures: np.ndarray | None  # memory map of the scratch signature file
    scratch_files: list[str]


def _first_pass(
    files: list[Path], cfg: CleanConfig, scratch: Path, rejects: ShardWriter, counts: Counter[str]
) -> _Collected:
    ids, sources, keys, bands, has_words, scratch_files = [], [], [], [], [], []
    n = 0
    with open(scratch / _SIGNATURES, "wb") as sig_file:
        for res in ordered_map(_first_pass_task, _tasks(files, cfg, scratch), workers=cfg.num_workers):
            counts.update(res.counts)
            rejects.write(res.rejects)
            ids.append(res.ids)
            sources.append(res.sources)
            n += len(res.ids)
            if res.scratch is not None:
                scratch_files.append(res.scratch)
            if res.keys is not None:
                keys.append(res.keys)
            if res.signatures is not None:
                sig_file.write(res.signatures.tobytes())
                has_words.append(res.signatures[:, 0] != EMPTY)
                bands.append(res.bands)
    signatures = None
    if cfg.near_dedup and n:
        signatures = np.memmap(
            scratch / _SIGNATURES, dtype=np.uint64, mode="r", shape=(n, cfg.near_dedup_num_perm)
        )
    return _Collected(
        pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
        pa.concat_arrays(sources) if sources else pa.array([], pa.string()),
        np.concatenate(keys)
        if cfg.exact_dedup and keys
        else (np.zeros((0, 16), np.uint8) if cfg.exact_dedup else None),
        np.concatenate(bands) if bands else None,
        np.concatenate(has_words) if has_words else None,
        signatures,
        scratch_files,
    )


def _rank(ids: pa.Array, sources: pa.Array) -> np.ndarray:
    """Each document's position in ``(source, id)`` order (UTF-8 byte order = code point order)."""
    order = pc.sort_indices(
        pa.table({"source": sources, "id": ids}), sort_keys=[("source", "ascending"), ("id", "ascending")]
    ).to_numpy()
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def _split(ids: list[str], kept: np.ndarray, cfg: CleanConfig) -> np.ndarray:
    """Route per document: train, validation (by id hash) or duplicate."""
    route = np.full(len(ids), _DUPLICATE, dtype=np.int8)
    keep = np.flatnonzero(kept == np.arange(len(ids)))
    values = np.array([split_value(ids[i], cfg.split_seed) for i in keep])
    route[keep] = np.where(values < cfg.validation_fraction, _VALIDATION, _TRAIN)
    if len(keep) >= 2:
        # Evaluation needs a validation document and training needs a train one, whatever the
        # fraction: move the document closest to the boundary.
        if not (route[keep] == _VALIDATION).any():
            route[keep[np.argmin(values)]] = _VALIDATION
        if not (route[keep] == _TRAIN).any():
            route[keep[np.argmax(values)]] = _TRAIN
    return route


def _second_pass(
    scratch_files: list[str],
    route: np.ndarray,
    dup_reason: np.ndarray,
    duplicate_of: list[str | None],
    writers: dict[int, ShardWriter],
    rejects: ShardWriter,
) -> int:
    """Write every scratch row where ``route`` sends it; return the bytes of text kept."""
    start, bytes_out = 0, 0
    for path in scratch_files:
        table = pq.read_table(path)
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
                    "reason": [
                        "exact_duplicate" if dup_reason[start + i] == EXACT else "near_duplicate"
                        for i in dups
                    ],
                    "duplicate_of": [duplicate_of[start + int(i)] for i in dups],
                }
            )
        start += table.num_rows
    return bytes_out


def _write_clusters(path: Path, found: list[tuple[int, str, np.ndarray]], ids: list[str]) -> None:
    table = pa.table(
        {
            "cluster_id": list(range(len(found))),
            "kind": [kind for _, kind, _ in found],
            "kept_id": [ids[kept] for kept, _, _ in found],
            "member_ids": [[ids[m] for m in members] for _, _, members in found],
            "size": [len(members) for _, _, members in found],
        },
        schema=CLUSTER_SCHEMA,
    )
    pq.write_table(table, path, compression="zstd")


def clean(ingest_dir: Path, cfg: CleanConfig, out_dir: Path) -> dict[str, Any]:
    """Clean the ingest shards into ``train/``, ``validation/``, ``rejects.parquet`` and
    ``duplicate_clusters.parquet``; return the counts (docs/contracts.md, "clean")."""
    _check(cfg)
    files = shard_files(ingest_dir)
    if not files:
        raise InputError(ingest_dir, "no part-*.parquet shards: not an ingest output")
    out_dir = Path(out_dir)
    scratch = out_dir / _SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    try:
        with ShardWriter(out_dir, REJECT_SCHEMA, template=REJECTS_FILE, write_empty=True) as rejects:
            got = _first_pass(files, cfg, scratch, rejects, counts)
            rank = _rank(got.ids, got.sources)
            dups = decide_duplicates(
                rank, got.keys, got.bands, got.signatures, got.has_words, cfg.near_dedup_threshold
            )
            ids = got.ids.to_pylist()
            route = _split(ids, dups.kept, cfg)
            duplicate_of = [ids[k] if k != i else None for i, k in enumerate(dups.kept.tolist())]
            writers = {
                code: ShardWriter(out_dir / name, DOC_SCHEMA, max_file_bytes=cfg.target_shard_bytes)
                for code, name in zip((_TRAIN, _VALIDATION), SPLITS, strict=True)
            }
            bytes_out = _second_pass(got.scratch_files, route, dups.reason, duplicate_of, writers, rejects)
            written = {
                name: writers[code].close() for code, name in zip((_TRAIN, _VALIDATION), SPLITS, strict=True)
            }
            found = clusters(dups.kept, dups.reason, rank)
            _write_clusters(out_dir / CLUSTERS_FILE, found, ids)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _counts(counts, cfg, route, dups, len(found), bytes_out, written)


def _counts(
    counts: Counter[str],
    cfg: CleanConfig,
    route: np.ndarray,
    dups: Duplicates,
    n_clusters: int,
    bytes_out: int,
    written: dict[str, list[Path]],
) -> dict[str, Any]:
    """The manifest counts; fails loudly if any document is unaccounted for."""
    exact = int((dups.reason == EXACT).sum())
    near = int(((dups.reason != KEPT) & (dups.reason != EXACT)).sum())
    filtered = {r: n for r, n in counts.items() if r in _FILTER_REASONS and n}
    rejected = {**filtered, "exact_duplicate": exact, "near_duplicate": near}
    rejected = {r: n for r, n in sorted(rejected.items()) if n}
    train, validation = int((route == _TRAIN).sum()), int((route == _VALIDATION).sum())
    if counts["records_in"] != train + validation + sum(rejected.values()):
        raise AssertionError(
            f"clean lost documents: {counts['records_in']} in, {train}+{validation}+{rejected}"
        )
    entering = len(route)
    bands, rows = lsh_params(cfg.near_dedup_threshold, cfg.near_dedup_num_perm) if cfg.near_dedup else (0, 0)
    return {
        "records_in": counts["records_in"],
        "train": train,
        "validation": validation,
        "rejected": rejected,
        "bytes_in": counts["bytes_in"],
        "bytes_out": bytes_out,
        "gutenberg_stripped": counts["gutenberg_stripped"],
        "lines": {
            "in": counts["lines_in"],
            "out": counts["lines_in"] - counts["lines_symbol"],
            "removed": {"symbol_line": counts["lines_symbol"]},
        },
        "dedup": {
            "documents": entering,
            "exact_duplicates": exact,
            "near_duplicates": near,
            "clusters": n_clusters,
            "rate": round((exact + near) / entering, 6) if entering else 0.0,
            "candidate_pairs": dups.candidate_pairs,
            "near_pairs": dups.near_pairs,
            "lsh_bands": bands,
            "lsh_rows": rows,
        },
        "shards": {name: len(paths) for name, paths in written.items()},
    }
