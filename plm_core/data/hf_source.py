"""A ``datasets`` dataset as an ingest source: a hub id (streamed), a packaged builder with data
files (``json``, ``parquet``, ``text``), or a directory written by ``save_to_disk``.

Streaming keeps memory bounded for hub datasets of any size (records arrive in batches as they
download); a saved dataset is memory-mapped Arrow, iterated in batches too. The cache key of a hub
dataset can only be its name, config, split and revision: pin ``hf_revision`` for reproducible
runs. Local data (saved directories, data files) is keyed on its content like any other input.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plm_core.config import IngestConfig
from plm_core.errors import InputError

_BATCH_ROWS = 1000
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def _saved_dir(cfg: IngestConfig) -> Path | None:
    path = Path(cfg.hf_dataset)
    return path if path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS) else None


def source_name(cfg: IngestConfig) -> str:
    """What the ``source`` column says for records of this dataset: ``hf:<name>[/<config>]:<split>``."""
    config = f"/{cfg.hf_config}" if cfg.hf_config else ""
    return f"hf:{cfg.hf_dataset}{config}:{cfg.hf_split}"


def hf_spec(cfg: IngestConfig) -> list[str]:
    """The parameters that name the dataset, for the cache key."""
    return [cfg.hf_dataset, cfg.hf_config, cfg.hf_split, cfg.hf_revision, *cfg.hf_data_files]


def hf_local_files(cfg: IngestConfig) -> list[Path]:
    """Files whose content decides the records (a saved directory's, or local data files); empty
    for a hub dataset."""
    saved = _saved_dir(cfg)
    if saved is not None:
        return sorted(p for p in saved.rglob("*") if p.is_file())
    found = {Path(m) for pattern in cfg.hf_data_files for m in glob.glob(pattern, recursive=True)}
    return sorted(p for p in found if p.is_file())


def _open(cfg: IngestConfig) -> Any:
    import datasets

    saved = _saved_dir(cfg)
    try:
        if saved is not None:
            ds = datasets.load_from_disk(str(saved))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.hf_split not in ds:
                    raise InputError(saved, f"has no split {cfg.hf_split!r} (splits: {', '.join(ds)})")
                ds = ds[cfg.hf_split]
            return ds
        return datasets.load_dataset(
            cfg.hf_dataset,
            cfg.hf_config or None,
            split=cfg.hf_split,
            data_files=cfg.hf_data_files or None,
            revision=cfg.hf_revision or None,
            streaming=cfg.hf_streaming,
        )
    except InputError:
        raise
    except Exception as e:  # datasets raises many types (hub, builder, file errors): name them all
        raise InputError(source_name(cfg), f"cannot load dataset: {type(e).__name__}: {e}") from None


def hf_records(cfg: IngestConfig) -> Iterator[tuple[str, str, Any]]:
    """``(id, source, text)`` for every record in dataset order; ``text`` is whatever the dataset
    holds (the caller rejects non-strings). Ids come from ``id_field`` or are ``<name>:<row>``."""
    ds = _open(cfg)
    source = source_name(cfg)
    stem = Path(cfg.hf_dataset.rstrip("/")).name or cfg.hf_dataset
    row = 0
    batches = iter(ds.iter(batch_size=_BATCH_ROWS))
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a malformed file surfaces here, mid-stream, as a builder error
            raise InputError(source, f"reading past record {row} failed: {type(e).__name__}: {e}") from None
        if batch is None:
            return
        if cfg.text_field not in batch:
            raise InputError(source, f"no column {cfg.text_field!r} (columns: {', '.join(batch)})")
        texts = batch[cfg.text_field]
        ids = batch.get(cfg.id_field) if cfg.id_field != cfg.text_field else None
        for i, text in enumerate(texts):
            row += 1
            doc_id = ids[i] if ids is not None else None
            yield (str(doc_id) if doc_id is not None else f"{stem}:{row}"), source, text
