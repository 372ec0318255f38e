"""Ingest: raw files (.txt, .jsonl, .parquet, optionally gzipped) -> Parquet shards ``{id, source, text}``.

Reading is streamed file by file and records are written through a rolling shard writer, so memory
holds one document (a .txt file is one document) plus one row group, never the corpus. Bad input
fails loudly with the file and line: a pipeline that silently skips undecodable records trains on
a corpus nobody chose. Every record read is accounted for: ``records_in == records_out + rejected``.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from plm_core.config import IngestConfig
from plm_core.data.shards import DOC_SCHEMA, ShardWriter
from plm_core.errors import InputError
from plm_core.stage import sha256_file

SUPPORTED_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
NO_FILES = "no .txt/.jsonl/.parquet files found"
_WRITE_BATCH_ROWS = 1024
_WRITE_BATCH_BYTES = 4 * 1024 * 1024
_PARQUET_BATCH_ROWS = 1024
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # bad header, truncated, corrupt stream


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def _stem(path: Path) -> str:
    return path.name[: -len(_suffix(path) or path.suffix)]


def _walk(directory: Path) -> list[Path]:
    """Supported files under a directory, skipping hidden files and folders (.git, editor swap)."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, n) for n in names if not n.startswith(".") and _suffix(Path(n))]
    return found


def resolve_inputs(paths: list[str]) -> list[Path]:
    """Expand files, directories (recursively) and globs into a sorted, duplicate-free file list.

    Sorting makes the corpus order, and so every downstream byte, independent of argument order
    and of directory listing order.
    """
    if not paths:
        raise InputError("(no paths)", "no input paths given")
    found: set[Path] = set()
    for raw in paths:
        if glob.has_magic(raw):
            candidates = [Path(m) for m in glob.glob(raw, recursive=True)]
        elif Path(raw).exists():
            candidates = [Path(raw)]
        else:
            raise InputError(raw, "does not exist")
        files: list[Path] = []
        for p in candidates:
            if p.is_dir():
                files += _walk(p)
            elif _suffix(p):
                files.append(p)
            elif not glob.has_magic(raw):
                raise InputError(
                    raw, f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
                )
        if not files:
            raise InputError(raw, NO_FILES)
        found.update(files)
    return sorted(found, key=str)


def inputs_digest(files: list[Path]) -> str:
    """sha256 over (name relative to the inputs' common folder, size, content sha256) of each file.

    Relative names keep the cache key stable when the corpus folder moves; content hashes make it
    change when any byte does.
    """
    resolved = [Path(f).resolve() for f in files]
    root = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    entries = sorted((p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)) for p in resolved)
    h = hashlib.sha256()
    for entry in entries:
        h.update(json.dumps(entry).encode() + b"\n")
    return h.hexdigest()


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _decode(path: Path, data: bytes, *, base_offset: int = 0, line: int | None = None) -> str:
    """Strict UTF-8; the error names the absolute byte offset and the line it falls on."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = line if line is not None else data.count(b"\n", 0, e.start) + 1
        raise InputError(path, f"not valid UTF-8 (byte offset {base_offset + e.start})", line=where) from None


def _read_txt(path: Path) -> str:
    try:
        with _open_binary(path) as f:
            data = f.read()
    except _GZIP_ERRORS as e:
        raise InputError(path, f"not a valid gzip file ({e})") from None
    return _decode(path, data)


def _jsonl_id(value: Any, path: Path, id_field: str, lineno: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InputError(
        path, f"id field {id_field!r} is {type(value).__name__}, not a string or integer", line=lineno
    )


def _read_jsonl(path: Path, cfg: IngestConfig, counts: Counter[str]) -> Iterator[tuple[str, str]]:
    stem, offset = _stem(path), 0
    with _open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                line = _decode(path, raw, base_offset=offset, line=lineno)
                offset += len(raw)
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    counts["blank_lines"] += 1
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(
                        path, f"malformed JSON: {e.msg} (column {e.colno})", line=lineno
                    ) from None
                if not isinstance(obj, dict):
                    raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
                if cfg.text_field not in obj:
                    raise InputError(path, f"missing text field {cfg.text_field!r}", line=lineno)
                text = obj[cfg.text_field]
                if not isinstance(text, str):
                    problem = f"text field {cfg.text_field!r} is {type(text).__name__}, not a string"
                    raise InputError(path, problem, line=lineno)
                doc_id = _jsonl_id(obj.get(cfg.id_field), path, cfg.id_field, lineno)
                yield (doc_id if doc_id is not None else f"{stem}:{lineno}"), text
        except _GZIP_ERRORS as e:
            raise InputError(path, f"not a valid gzip file ({e})") from None


def _read_parquet(path: Path, cfg: IngestConfig) -> Iterator[tuple[str, str]]:
    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise InputError(path, f"not a readable Parquet file ({e})") from None
    schema = pf.schema_arrow
    if cfg.text_field not in schema.names:
        raise InputError(path, f"no column {cfg.text_field!r} (columns: {', '.join(schema.names)})")
    text_type = schema.field(cfg.text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise InputError(path, f"column {cfg.text_field!r} is {text_type}, not a string")
    has_id = cfg.id_field in schema.names and cfg.id_field != cfg.text_field
    columns = [cfg.text_field] + ([cfg.id_field] if has_id else [])
    stem, row = _stem(path), 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        texts = batch.column(cfg.text_field).to_pylist()
        ids = batch.column(cfg.id_field).cast(pa.string()).to_pylist() if has_id else [None] * len(texts)
        for text, doc_id in zip(texts, ids, strict=True):
            row += 1
            if text is None:
                raise InputError(path, f"row {row}: {cfg.text_field!r} is null")
            yield (doc_id if doc_id is not None else f"{stem}:{row}"), text


def _unique(stem: str, used: set[str]) -> str:
    """A .txt document's id is its file stem; a clash (a/x.txt, b/x.txt) gets -2, -3 ... in path order."""
    doc_id, n = stem, 1
    while doc_id in used:
        n += 1
        doc_id = f"{stem}-{n}"
    used.add(doc_id)
    return doc_id


def _records(
    path: Path, cfg: IngestConfig, txt_ids: set[str], counts: Counter[str]
) -> Iterator[tuple[str, str]]:
    suffix = _suffix(path)
    if suffix in (".txt", ".txt.gz"):
        yield _unique(_stem(path), txt_ids), _read_txt(path)
    elif suffix in (".jsonl", ".jsonl.gz"):
        yield from _read_jsonl(path, cfg, counts)
    else:
        yield from _read_parquet(path, cfg)


def ingest(cfg: IngestConfig, out_dir: Path) -> dict[str, Any]:
    """Stream every input record into ``out_dir/part-NNNNN.parquet`` and return the counts."""
    files = resolve_inputs(cfg.paths)
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    txt_ids: set[str] = set()
    batch: dict[str, list[str]] = {"id": [], "source": [], "text": []}
    batch_bytes = 0
    with ShardWriter(out_dir, DOC_SCHEMA, max_rows=cfg.rows_per_shard) as writer:
        for path in files:
            if cfg.max_docs and counts["records_out"] >= cfg.max_docs:
                break
            counts["files"] += 1
            for doc_id, text in _records(path, cfg, txt_ids, counts):
                counts["records_in"] += 1
                if not text or text.isspace():
                    rejected["empty"] += 1
                    continue
                batch["id"].append(doc_id)
                batch["source"].append(str(path))
                batch["text"].append(text)
                batch_bytes += len(text)
                counts["records_out"] += 1
                if len(batch["id"]) >= _WRITE_BATCH_ROWS or batch_bytes >= _WRITE_BATCH_BYTES:
                    writer.write(batch)
                    batch = {"id": [], "source": [], "text": []}
                    batch_bytes = 0
                if cfg.max_docs and counts["records_out"] >= cfg.max_docs:
                    break
        if counts["records_out"] == 0:
            raise InputError(", ".join(cfg.paths), "corpus is empty: no documents")
        writer.write(batch)
    return {
        "files": counts["files"],
        "records_in": counts["records_in"],
        "records_out": counts["records_out"],
        "rejected": dict(sorted(rejected.items())),
        "blank_lines": counts["blank_lines"],
        "shards": len(writer.files),
    }
