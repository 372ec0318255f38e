"""Two-segment examples for BERT's next-sentence prediction (NSP) and ALBERT's sentence-order
prediction (SOP), cut from a packed token split along its document boundaries.

Example ``i`` is anchored at token ``i * (seq_len - 2)`` of the split (so an epoch has as many
examples as ``PackedSequences`` has windows): the chunk is the ``seq_len - 3`` tokens of the
anchor's document from there on (moved back to fit when the document ends sooner, or the whole
document when it is shorter; a document too short to split hands its anchor to the next one).
The chunk is cut at a uniform point into A and B, then with probability 1/2:

- NSP (Devlin et al. 2019): B is replaced by a span of the same length (or what fits) from a
  uniformly drawn *other* document -- label 1; else A B are consecutive text -- label 0.
- SOP (Lan et al. 2020): the two are swapped, B A -- label 1; else A B -- label 0.

Segments are token spans, not sentences: the pack keeps no sentence boundaries, and a cut point
drawn per example gives the segment-length variety that BERT got from sentence packing.

Layout: ``[CLS] A [SEP] B [SEP] [PAD]...``, ``token_type_ids`` 0 over ``[CLS] A [SEP]`` (and the
padding), 1 over ``B [SEP]``. Token corruption is the MLM collator's job afterwards::

    pairs = SentencePairs(pack_dir, "train", seq_len, kind="sop", pad_id=tok["pad_id"])
    batch = pairs.batch(indices, generator)
    batch.update(collate(batch["input_ids"], generator))  # "input_ids" corrupted, "labels"
    loss = BertForPreTraining(cfg)(**batch)["loss"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from plm_core.data.loader import PackedSequences
from plm_core.errors import ConfigError, InputError

SENTENCE_OBJECTIVES = ("nsp", "sop")


class SentencePairs:
    """NSP/SOP example builder over one split of a pack directory (docs/contracts.md, "pack").

    ``batch(indices, generator)`` is deterministic in the indices and the generator's state,
    so a resumed run rebuilds the same examples. The token memmap opens on first use and is
    dropped when pickled (only paths and the small offsets array travel).
    """

    def __init__(self, pack_dir: str | Path, split: str, seq_len: int, *, kind: str, pad_id: int) -> None:
        if kind not in SENTENCE_OBJECTIVES:
            raise ConfigError(f"unknown sentence objective {kind!r}; choose one of {SENTENCE_OBJECTIVES}")
        if seq_len < 5:
            raise ConfigError(f"seq_len must be >= 5 for [CLS] A [SEP] B [SEP], got {seq_len}")
        self.stream = PackedSequences(pack_dir, split, seq_len)  # validates meta.json and the .bin
        self.kind, self.seq_len, self.pad_id = kind, seq_len, pad_id
        self.budget = seq_len - 3  # tokens of A + B
        docs_path = Path(pack_dir) / f"{split}.docs.npy"
        if not docs_path.is_file():
            raise InputError(docs_path, "missing")
        self.offsets = np.load(docs_path, allow_pickle=False).astype(np.int64)  # [D + 1]
        if self.offsets.size < 2 or self.offsets[0] != 0 or self.offsets[-1] != self.stream.num_tokens:
            raise InputError(docs_path, f"offsets do not span the {self.stream.num_tokens} tokens")
        content = np.diff(self.offsets) - 1  # [D] tokens of each document without its [SEP]
        splittable = np.flatnonzero(content >= 2)
        if splittable.size == 0:
            raise InputError(docs_path, "no document has the two tokens a segment pair needs")
        # next_splittable[d]: the first document at or after d (wrapping) that can be cut in two.
        doc_ids = np.arange(content.size)
        self.next_splittable = splittable[np.searchsorted(splittable, doc_ids) % splittable.size]  # [D]
        self.nonempty = np.flatnonzero(content >= 1)  # candidates for NSP's random segment
        if kind == "nsp" and self.nonempty.size < 2:
            raise InputError(docs_path, "NSP needs at least two non-empty documents")
        self._tokens: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.stream)

    def _token_array(self) -> np.memmap:
        if self._tokens is None:
            s = self.stream
            self._tokens = np.memmap(s.path, dtype=s.dtype, mode="r", shape=(s.num_tokens,))
        return self._tokens

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}

    def _chunks(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document, chunk start, chunk length >= 2) of each anchor, as [B] int64 arrays."""
        anchor = indices * self.stream.window  # [B] token positions
        doc = np.searchsorted(self.offsets, anchor, side="right") - 1
        doc = self.next_splittable[np.clip(doc, 0, self.next_splittable.size - 1)]
        start, end = self.offsets[doc], self.offsets[doc + 1] - 1  # content, without the [SEP]
        chunk_start = np.clip(anchor, start, np.maximum(start, end - self.budget))
        return doc, chunk_start, np.minimum(self.budget, end - chunk_start)

    def _random_segments(
        self, doc: np.ndarray, length: np.ndarray, u_doc: np.ndarray, u_start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) [B] of a span of up to ``length`` tokens from a document other than
        ``doc``, the document and the start uniform."""
        m = self.nonempty.size
        pick = np.minimum((u_doc * (m - 1)).astype(np.int64), m - 2)  # uniform over the m - 1 others
        pick += pick >= np.searchsorted(self.nonempty, doc)  # skip the anchor's own document
        other = self.nonempty[pick]
        start, available = self.offsets[other], self.offsets[other + 1] - 1 - self.offsets[other]
        taken = np.minimum(length, available)
        return start + (u_start * (available - taken + 1)).astype(np.int64), taken

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``indices`` [B] example indices -> {"input_ids" [B, T], "token_type_ids" [B, T],
        "attention_mask" [B, T] (1 = real, 0 = pad), "sentence_labels" [B] (0 natural, 1 not)}."""
        idx = indices.cpu().numpy().astype(np.int64)
        B = idx.size
        u = torch.rand((B, 4), generator=generator, dtype=torch.float64).numpy()  # [B, 4] in [0, 1)
        doc, chunk_start, chunk_len = self._chunks(idx)
        cut = 1 + (u[:, 0] * (chunk_len - 1)).astype(np.int64)  # len(A) in [1, chunk_len - 1]
        negative = u[:, 1] < 0.5  # [B]
        a = (chunk_start, cut)
        b = (chunk_start + cut, chunk_len - cut)
        if self.kind == "sop":
            first = tuple(np.where(negative, y, x) for x, y in zip(a, b, strict=True))
            second = tuple(np.where(negative, x, y) for x, y in zip(a, b, strict=True))
        else:
            rand_start, rand_len = self._random_segments(doc, b[1], u[:, 2], u[:, 3])
            first = a
            second = (np.where(negative, rand_start, b[0]), np.where(negative, rand_len, b[1]))
        return self._layout(first, second, negative)

    def _layout(
        self,
        first: tuple[np.ndarray, np.ndarray],
        second: tuple[np.ndarray, np.ndarray],
        negative: np.ndarray,
    ) -> dict[str, torch.Tensor]:
        """Gather ``[CLS] first [SEP] second [SEP] [PAD]...`` rows from (start, length) spans."""
        t = np.arange(self.seq_len)[None, :]  # [1, T]
        (fs, fl), (ss, sl) = ((s[:, None], n[:, None]) for s, n in (first, second))  # [B, 1] each
        in_first = (t >= 1) & (t <= fl)  # [B, T]
        in_second = (t >= fl + 2) & (t < fl + 2 + sl)  # [B, T]
        source = np.where(in_first, fs + t - 1, np.where(in_second, ss + t - fl - 2, 0))  # [B, T]
        ids = np.where(in_first | in_second, self._token_array()[source], self.pad_id).astype(np.int64)
        ids[:, 0] = self.stream.cls_id
        rows = np.arange(ids.shape[0])
        ids[rows, fl[:, 0] + 1] = self.stream.sep_id
        ids[rows, fl[:, 0] + sl[:, 0] + 2] = self.stream.sep_id
        last = fl + sl + 2  # [B, 1] position of the final [SEP]
        return {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(((t >= fl + 2) & (t <= last)).astype(np.int64)),
            "attention_mask": torch.from_numpy((t <= last).astype(np.int64)),
            "sentence_labels": torch.from_numpy(negative.astype(np.int64)),
        }
