"""Fixed-length training sequences over a packed token split (format in docs/contracts.md, "pack").

The split is one flat memory-mapped array; sequence ``i`` is ``[CLS] + window_i + [SEP]`` over
consecutive non-overlapping windows of ``seq_len - 2`` tokens, so no token is padding and no
position is wasted. Windows cross document boundaries (each document ends in its own ``[SEP]``),
the usual packing for MLM pretraining.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from plm_core.errors import ConfigError, InputError


class PackedSequences(Dataset[torch.Tensor]):
    """Map-style dataset: item ``i`` is a LongTensor [seq_len].

    The memmap opens on first access and is dropped when pickled, so sending the dataset to a
    Ray worker ships a path, not the tokens, and each process maps the file itself.
    """

    def __init__(self, pack_dir: str | Path, split: str, seq_len: int) -> None:
        if seq_len < 3:
            raise ConfigError(f"seq_len must be >= 3 ([CLS] + tokens + [SEP]), got {seq_len}")
        self.pack_dir = Path(pack_dir)
        self.split = split
        self.seq_len = seq_len
        self.window = seq_len - 2
        meta_path = self.pack_dir / "meta.json"
        if not meta_path.is_file():
            raise InputError(meta_path, "missing; not a pack directory")
        meta = json.loads(meta_path.read_text())
        if split not in meta.get("splits", {}):
            raise InputError(meta_path, f"has no split {split!r} (splits: {sorted(meta.get('splits', {}))})")
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        self.cls_id = int(meta["cls_id"])
        self.sep_id = int(meta["sep_id"])
        self.path = self.pack_dir / f"{split}.bin"
        if not self.path.is_file():
            raise InputError(self.path, "missing")
        self.num_tokens = self.path.stat().st_size // self.dtype.itemsize
        if self.num_tokens != meta["splits"][split]["tokens"]:
            raise InputError(
                self.path, f"holds {self.num_tokens} tokens, meta.json says {meta['splits'][split]['tokens']}"
            )
        if self.num_tokens < self.window:
            raise InputError(
                self.path,
                f"has {self.num_tokens} tokens, fewer than one sequence of seq_len {seq_len} "
                f"({self.window} tokens + [CLS] + [SEP])",
            )
        self._tokens: np.memmap | None = None

    def __len__(self) -> int:
        return self.num_tokens // self.window

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        window = self._tokens[i * self.window : (i + 1) * self.window]
        out = torch.empty(self.seq_len, dtype=torch.long)  # [seq_len]
        out[0] = self.cls_id
        out[1:-1] = torch.from_numpy(window.astype(np.int64))
        out[-1] = self.sep_id
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}
