"""Parquet shards on disk: a rolling writer of bounded size and the reader-side listing.

Every stage that emits documents writes ``part-00000.parquet``, ``part-00001.parquet`` ... so the
next stage can parallelise over files and row groups. The writer buffers rows and flushes a row
group once the buffered text passes ``row_group_bytes``, which is what bounds memory on both sides:
readers load one row group at a time. Each file is written under ``*.tmp`` and renamed when
closed, so a file named ``part-*.parquet`` is always complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PART_TEMPLATE = "part-{:05d}.parquet"
# About 4 MB of text per row group: large enough for fast columnar reads, small enough that a
# process pool gets several row groups to share out even on a 100 MB corpus.
ROW_GROUP_BYTES = 4 * 1024 * 1024
ROW_GROUP_MAX_ROWS = 65_536

DOC_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string())])
# One row per record a stage dropped: why, and for duplicates the id of the document kept instead.
REJECT_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())]
)
REJECTS_FILE = "rejects.parquet"


def _row_bytes(table: pa.Table) -> np.ndarray:
    """Bytes of string data in each row: what decides row-group size for text tables."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
            sizes += pc.binary_length(column).fill_null(0).to_numpy()
    return sizes


def shard_files(directory: str | Path) -> list[Path]:
    """The ``part-*.parquet`` files of a shard directory in write order."""
    return sorted(Path(directory).glob("part-*.parquet"))


class ShardWriter:
    """Append rows (dicts of equal-length columns) to rolling Parquet files of one schema.

    A new file starts once the current one reaches ``max_file_bytes`` on disk (compressed) or holds
    ``max_rows`` rows; 0 disables either limit. With ``template`` lacking a ``{}`` slot the writer
    produces exactly one file, and ``write_empty`` makes it exist even when no row arrives (a
    rejects table is always present, possibly empty).
    """

    def __init__(
        self,
        directory: str | Path,
        schema: pa.Schema,
        *,
        template: str = PART_TEMPLATE,
        max_file_bytes: int = 0,
        max_rows: int = 0,
        row_group_bytes: int = ROW_GROUP_BYTES,
        write_empty: bool = False,
        compression: str = "zstd",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.template = template
        rolling = "{" in template
        if not rolling and (max_file_bytes or max_rows):
            raise ValueError(f"size limits need a numbered template, got {template!r}")
        self.max_file_bytes = max_file_bytes
        self.max_rows = max_rows
        self.row_group_bytes = max(1, min(row_group_bytes, max_file_bytes or row_group_bytes))
        self.write_empty = write_empty
        self.compression = compression
        self.files: list[Path] = []
        self.rows_written = 0
        self._buffer: list[pa.Table] = []
        self._buffer_rows = 0
        self._buffer_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._tmp: Path | None = None
        self._file_rows = 0

    def write(self, columns: dict[str, Any] | pa.Table) -> None:
        """Buffer a batch of rows; write every full row group the buffer now holds."""
        table = columns if isinstance(columns, pa.Table) else pa.table(columns, schema=self.schema)
        table = table.select(self.schema.names).cast(self.schema)
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffer_rows += table.num_rows
        self._buffer_bytes += int(_row_bytes(table).sum())
        if self._buffer_bytes >= self.row_group_bytes or self._buffer_rows >= ROW_GROUP_MAX_ROWS:
            self._flush(keep_partial=True)

    def close(self) -> list[Path]:
        """Flush what is buffered, publish the last file and return every file written."""
        self._flush()
        self._finish_file()
        if not self.files and self.write_empty:
            self._open_file()
            self._finish_file()
        return self.files

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        elif self._sink is not None:
            self._sink.close()

    def _flush(self, keep_partial: bool = False) -> None:
        """Cut the buffer into row groups of about ``row_group_bytes``; with ``keep_partial`` the
        last, not yet full group stays buffered for the next write."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        ends = np.cumsum(_row_bytes(table))
        start = 0
        while start < table.num_rows:
            base = ends[start - 1] if start else 0
            stop = int(np.searchsorted(ends, base + self.row_group_bytes, side="right"))
            stop = min(max(stop, start + 1), start + ROW_GROUP_MAX_ROWS)
            full = stop < table.num_rows or ends[-1] - base >= self.row_group_bytes
            if keep_partial and not full:
                break
            self._write_group(table.slice(start, stop - start))
            start = stop
        rest = table.slice(start)
        self._buffer = [rest] if rest.num_rows else []
        self._buffer_rows = rest.num_rows
        self._buffer_bytes = int(ends[-1]) - (int(ends[start - 1]) if start else 0)

    def _write_group(self, group: pa.Table) -> None:
        start = 0
        while start < group.num_rows:
            if self._writer is None:
                self._open_file()
            room = self.max_rows - self._file_rows if self.max_rows else group.num_rows - start
            chunk = group.slice(start, min(room, group.num_rows - start))
            self._writer.write_table(chunk, row_group_size=chunk.num_rows)
            self._file_rows += chunk.num_rows
            self.rows_written += chunk.num_rows
            start += chunk.num_rows
            full_rows = bool(self.max_rows) and self._file_rows >= self.max_rows
            full_bytes = bool(self.max_file_bytes) and self._sink.tell() >= self.max_file_bytes
            if full_rows or full_bytes:
                self._finish_file()

    def _open_file(self) -> None:
        name = self.template.format(len(self.files))
        self._tmp = self.directory / f"{name}.tmp"
        self._sink = open(self._tmp, "wb")  # noqa: SIM115 - closed in _finish_file
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression=self.compression)
        self._file_rows = 0

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        final = self._tmp.with_name(self._tmp.name.removesuffix(".tmp"))
        os.replace(self._tmp, final)
        self.files.append(final)
        self._writer, self._sink, self._tmp = None, None, None
