"""Ingest: raw files (.txt, .jsonl, .parquet, optionally gzipped) and ``datasets`` sources ->
Parquet shards ``{id, source, text}`` plus ``rejects.parquet``.

Reading is streamed record by record and written through a rolling shard writer, so memory holds
one record (a .txt file is one record) plus one row group, never the corpus; a record above
``max_record_bytes`` is skipped without being decoded. Bad input is never dropped silently: by
default it fails naming the file and line (a pipeline that skips undecodable records trains on a
corpus nobody chose), and with ``bad_records="skip"`` it becomes a reject row with its reason.
Every record is accounted for: ``records_in == records_out + sum(rejected.values())``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from plm_core.config import IngestConfig
from plm_core.data.hf_source import hf_local_files, hf_records, hf_spec
from plm_core.data.shards import DOC_SCHEMA, REJECT_SCHEMA, REJECTS_FILE, ShardWriter
from plm_core.errors import ConfigError, InputError
from plm_core.stage import sha256_file

SUPPORTED_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
NO_FILES = "no .txt/.jsonl/.parquet files found"
_WRITE_BATCH_ROWS = 1024
_WRITE_BATCH_BYTES = 4 * 1024 * 1024
_PARQUET_BATCH_ROWS = 1024
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # bad header, truncated, corrupt stream
_SNIFF_BYTES = 8192  # git's binary heuristic: a NUL byte in the first 8 KB
_SKIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    """One input record: its text, or (``text is None``) the reason it was rejected."""

    id: str
    source: str
    text: str | None
    reason: str | None = None


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


def source_digest(cfg: IngestConfig) -> str:
    """The cache key of the raw input: the files' digest, plus the ``datasets`` source's name and
    (for local data) content when one is set.

    A file-only corpus keeps exactly ``inputs_digest`` so existing stage directories stay valid.
    """
    if not cfg.paths and not cfg.hf_dataset:
        raise InputError("(no paths)", "no input paths and no hf_dataset given")
    if not cfg.hf_dataset:
        return inputs_digest(resolve_inputs(cfg.paths))
    local = hf_local_files(cfg)
    parts = {
        "hf": hf_spec(cfg),
        "hf_files": inputs_digest(local) if local else None,
        "files": inputs_digest(resolve_inputs(cfg.paths)) if cfg.paths else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class _Reader:
    """Turns each supported file into ``Record``s under the configured bad-input policy."""

    def __init__(self, cfg: IngestConfig, counts: Counter[str]) -> None:
        self.cfg = cfg
        self.counts = counts
        self.txt_ids: set[str] = set()

    def bad(
        self, path: Path | str, doc_id: str, reason: str, problem: str, line: int | None = None
    ) -> Record:
        """A malformed record: an error naming file and line, or a reject under ``skip``."""
        if self.cfg.bad_records == "error":
            raise InputError(path, problem, line=line)
        return Record(doc_id, str(path), None, reason)

    def decode(self, path: Path, data: bytes, *, base_offset: int = 0, line: int | None = None) -> str:
        """UTF-8; strict names the absolute byte offset and its line, replace counts the record."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.cfg.encoding_errors == "replace":
                self.counts["decode_replaced"] += 1
                return data.decode("utf-8", errors="replace")
            where = line if line is not None else data.count(b"\n", 0, e.start) + 1
            raise InputError(
                path, f"not valid UTF-8 (byte offset {base_offset + e.start})", line=where
            ) from None

    def records(self, path: Path) -> Iterator[Record]:
        suffix = _suffix(path)
        try:
            if suffix in (".txt", ".txt.gz"):
                yield self._txt(path)
            elif suffix in (".jsonl", ".jsonl.gz"):
                yield from self._jsonl(path)
            else:
                yield from self._parquet(path)
        except _GZIP_ERRORS as e:
            yield self.bad(path, _stem(path), "bad_gzip", f"not a valid gzip file ({e})")

    def _binary(self, path: Path, head: bytes) -> Record | None:
        nul = head.find(b"\x00", 0, _SNIFF_BYTES)
        if nul < 0:
            return None
        return self.bad(path, _stem(path), "binary", f"binary content (NUL byte at offset {nul}), not text")

    def _txt(self, path: Path) -> Record:
        doc_id = _unique(_stem(path), self.txt_ids)
        limit = self.cfg.max_record_bytes
        if not path.name.lower().endswith(".gz") and path.stat().st_size > limit:
            return Record(doc_id, str(path), None, "too_large")
        with _open_binary(path) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            return Record(doc_id, str(path), None, "too_large")
        if (bad := self._binary(path, data)) is not None:
            return Record(doc_id, bad.source, None, bad.reason)
        return Record(doc_id, str(path), self.decode(path, data))

    def _jsonl(self, path: Path) -> Iterator[Record]:
        stem, offset, lineno = _stem(path), 0, 0
        limit = self.cfg.max_record_bytes
        with _open_binary(path) as f:
            if (bad := self._binary(path, f.peek(_SNIFF_BYTES)[:_SNIFF_BYTES])) is not None:
                yield bad
                return
            while raw := f.readline(limit + 1):
                lineno += 1
                doc_id = f"{stem}:{lineno}"
                if len(raw) > limit and not raw.endswith(b"\n"):
                    offset += len(raw) + _skip_line(f)
                    yield Record(doc_id, str(path), None, "too_large")
                    continue
                line = self.decode(path, raw, base_offset=offset, line=lineno)
                offset += len(raw)
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    self.counts["blank_lines"] += 1
                    continue
                yield self._json_record(path, line, lineno, stem)

    def _json_record(self, path: Path, line: str, lineno: int, stem: str) -> Record:
        cfg, doc_id = self.cfg, f"{stem}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return self.bad(
                path, doc_id, "malformed_json", f"malformed JSON: {e.msg} (column {e.colno})", lineno
            )
        if not isinstance(obj, dict):
            return self.bad(
                path, doc_id, "not_an_object", f"expected a JSON object, got {type(obj).__name__}", lineno
            )
        if cfg.text_field not in obj:
            return self.bad(path, doc_id, "missing_text", f"missing text field {cfg.text_field!r}", lineno)
        text = obj[cfg.text_field]
        if not isinstance(text, str):
            problem = f"text field {cfg.text_field!r} is {type(text).__name__}, not a string"
            return self.bad(path, doc_id, "bad_text_type", problem, lineno)
        value = obj.get(cfg.id_field)
        if value is not None and not isinstance(value, str):
            if not isinstance(value, int) or isinstance(value, bool):
                problem = f"id field {cfg.id_field!r} is {type(value).__name__}, not a string or integer"
                return self.bad(path, doc_id, "bad_id_type", problem, lineno)
            value = str(value)
        return Record(value if value is not None else doc_id, str(path), text)

    def _parquet(self, path: Path) -> Iterator[Record]:
        cfg, stem, row = self.cfg, _stem(path), 0
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            yield self.bad(path, stem, "unreadable_parquet", f"not a readable Parquet file ({e})")
            return
        schema = pf.schema_arrow
        if cfg.text_field not in schema.names:
            raise InputError(path, f"no column {cfg.text_field!r} (columns: {', '.join(schema.names)})")
        text_type = schema.field(cfg.text_field).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise InputError(path, f"column {cfg.text_field!r} is {text_type}, not a string")
        has_id = cfg.id_field in schema.names and cfg.id_field != cfg.text_field
        columns = [cfg.text_field] + ([cfg.id_field] if has_id else [])
        batches = pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:
                yield self.bad(
                    path, f"{stem}:{row + 1}", "unreadable_parquet", f"unreadable after row {row} ({e})"
                )
                return
            if batch is None:
                return
            texts = batch.column(cfg.text_field).to_pylist()
            ids = batch.column(cfg.id_field).cast(pa.string()).to_pylist() if has_id else [None] * len(texts)
            for text, doc_id in zip(texts, ids, strict=True):
                row += 1
                doc_id = doc_id if doc_id is not None else f"{stem}:{row}"
                if text is None:
                    yield self.bad(path, doc_id, "null_text", f"row {row}: {cfg.text_field!r} is null")
                elif _too_large(text, cfg.max_record_bytes):
                    yield Record(doc_id, str(path), None, "too_large")
                else:
                    yield Record(doc_id, str(path), text)


def _too_large(text: str, limit: int) -> bool:
    """UTF-8 size above ``limit``, encoding only texts that could be (a character is <= 4 bytes)."""
    return len(text) > limit or (4 * len(text) > limit and len(text.encode()) > limit)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _skip_line(f: BinaryIO) -> int:
    """Consume the rest of an over-long line in bounded chunks; return the bytes skipped."""
    skipped = 0
    while chunk := f.readline(_SKIP_CHUNK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _unique(stem: str, used: set[str]) -> str:
    """A .txt document's id is its file stem; a clash (a/x.txt, b/x.txt) gets -2, -3 ... in path order."""
    doc_id, n = stem, 1
    while doc_id in used:
        n += 1
        doc_id = f"{stem}-{n}"
    used.add(doc_id)
    return doc_id


def _check(cfg: IngestConfig) -> None:
    if cfg.encoding_errors not in ("strict", "replace"):
        raise ConfigError(f"encoding_errors must be 'strict' or 'replace', got {cfg.encoding_errors!r}")
    if cfg.bad_records not in ("error", "skip"):
        raise ConfigError(f"bad_records must be 'error' or 'skip', got {cfg.bad_records!r}")
    if cfg.max_record_bytes <= 0:
        raise ConfigError(f"max_record_bytes must be positive, got {cfg.max_record_bytes}")
    if not cfg.paths and not cfg.hf_dataset:
        raise InputError("(no paths)", "no input paths and no hf_dataset given")


def _all_records(cfg: IngestConfig, reader: _Reader) -> Iterator[Record]:
    """Files in sorted path order, then the ``datasets`` source."""
    for path in resolve_inputs(cfg.paths) if cfg.paths else []:
        reader.counts["files"] += 1
        yield from reader.records(path)
    if cfg.hf_dataset:
        reader.counts["files"] += 1
        for doc_id, source, text in hf_records(cfg):
            if not isinstance(text, str):
                kind = "null" if text is None else type(text).__name__
                yield reader.bad(source, doc_id, "bad_text_type", f"record {doc_id}: text is {kind}")
            elif _too_large(text, cfg.max_record_bytes):
                yield Record(doc_id, source, None, "too_large")
            else:
                yield Record(doc_id, source, text)


class _Batch:
    """Columns collected for one ``ShardWriter.write`` call (one Arrow table per ~1k rows, not per row)."""

    def __init__(self, writer: ShardWriter) -> None:
        self.writer = writer
        self.columns: dict[str, list[str | None]] = {name: [] for name in writer.schema.names}
        self.nbytes = 0

    def add(self, **row: str | None) -> None:
        for name, values in self.columns.items():
            values.append(row[name])
        self.nbytes += len(row.get("text") or "")
        if len(self.columns["id"]) >= _WRITE_BATCH_ROWS or self.nbytes >= _WRITE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        self.writer.write(self.columns)
        self.columns = {name: [] for name in self.columns}
        self.nbytes = 0


def ingest(cfg: IngestConfig, out_dir: Path) -> dict[str, Any]:
    """Stream every input record into ``out_dir/part-NNNNN.parquet`` (+ rejects) and return counts."""
    _check(cfg)
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    reader = _Reader(cfg, counts)
    with (
        ShardWriter(out_dir, DOC_SCHEMA, max_rows=cfg.rows_per_shard) as writer,
        ShardWriter(out_dir, REJECT_SCHEMA, template=REJECTS_FILE, write_empty=True) as reject_writer,
    ):
        docs, rejects = _Batch(writer), _Batch(reject_writer)
        for rec in _all_records(cfg, reader):
            counts["records_in"] += 1
            reason = rec.reason or ("empty" if not rec.text or rec.text.isspace() else None)
            if reason is not None:
                rejected[reason] += 1
                rejects.add(id=rec.id, source=rec.source, reason=reason, duplicate_of=None)
            else:
                docs.add(id=rec.id, source=rec.source, text=rec.text)
                counts["records_out"] += 1
            if cfg.max_docs and counts["records_out"] >= cfg.max_docs:
                break
        if counts["records_out"] == 0:
            sources = ", ".join([*cfg.paths, *([cfg.hf_dataset] if cfg.hf_dataset else [])])
            raise InputError(sources, f"corpus is empty: no documents (rejected: {dict(rejected)})")
        docs.flush()
        rejects.flush()
    return {
        "files": counts["files"],
        "records_in": counts["records_in"],
        "records_out": counts["records_out"],
        "rejected": dict(sorted(rejected.items())),
        "blank_lines": counts["blank_lines"],
        "decode_replaced": counts["decode_replaced"],
        "shards": len(writer.files),
    }
