"""A batch of documents cut into pieces (words, lines, paragraphs) in one Arrow call, with the
document each piece belongs to: the layout every vectorised per-document statistic starts from
(``np.bincount(piece_doc, weights)`` is then a per-document sum)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return as_array(values).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class Pieces:
    """A list array flattened: the pieces, each piece's document, and per-document counts."""

    flat: pa.Array
    doc: np.ndarray  # [pieces] int64 document index
    per_doc: np.ndarray  # [docs] int64 pieces in each document

    @classmethod
    def of(cls, lists: pa.Array | pa.ChunkedArray) -> Pieces:
        lists = as_array(lists)
        per_doc = np.diff(lists.offsets.to_numpy()).astype(np.int64)
        doc = np.repeat(np.arange(len(lists), dtype=np.int64), per_doc)
        return cls(lists.flatten(), doc, per_doc)


def words(texts: pa.Array | pa.ChunkedArray) -> Pieces:
    """Whitespace-separated words. Arrow's ``utf8_split_whitespace`` yields an empty token for
    leading or trailing whitespace and for an empty text; those are dropped here."""
    split = Pieces.of(pc.utf8_split_whitespace(texts))
    nonempty = to_numpy(pc.binary_length(split.flat)) > 0
    if nonempty.all():
        return split
    doc = split.doc[nonempty]
    return Pieces(split.flat.filter(pa.array(nonempty)), doc, np.bincount(doc, minlength=len(texts)))
