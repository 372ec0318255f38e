"""Quality filters: a line-level symbol filter and the Gopher document rules (Rae et al. 2021,
"Scaling Language Models", appendix A.1.1), every threshold a ``CleanConfig`` field.

Everything runs over a whole Arrow batch at once: words and lines come from Arrow string kernels,
repetition is found by hashing n-grams of per-batch word ids and sorting the keys
(``first_occurrence``), and per-document sums are ``np.bincount`` over a document-index array.
No Python runs per word or per line, only per batch (about 1 s per 3.6 MB of books on one core).

Definitions (where Gopher's text leaves room):
- a *word* is a whitespace-separated token; characters are counted over words (no spaces);
- a *duplicate* line / paragraph / n-gram is a second or later occurrence inside the document;
- the *top n-gram* share is the largest ``occurrences x characters`` of any repeated n-gram
  (overlapping occurrences count), over the document's word characters;
- the *duplicate n-gram* share is the characters of words covered by any later occurrence of an
  n-gram, over the document's word characters.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plm_core.config import CleanConfig
from plm_core.data.hashing import splitmix64
from plm_core.data.segments import Pieces, as_array, to_numpy
from plm_core.data.segments import words as split_words

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
TOP_NGRAM_SIZES = (2, 3, 4)
DUPLICATE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)
_BULLET_LINE = r"^\s*[•●○▪◦‣⁃∙·\-\*]"
_ELLIPSIS_LINE = r"(\.\.\.|…)\s*$"
_LETTERS_DIGITS_SPACES = r"[\p{L}\p{N} \t]+"
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for n-gram key mixing
# Document rules in the order they are checked; a rejected document records the first it fails.
RULES = (
    "too_few_words",
    "too_many_words",
    "mean_word_length",
    "symbol_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "alpha_words",
    "stop_words",
    "duplicate_lines",
    "duplicate_line_chars",
    "duplicate_paragraphs",
    "duplicate_paragraph_chars",
    *(f"top_{n}gram" for n in TOP_NGRAM_SIZES),
    *(f"duplicate_{n}gram" for n in DUPLICATE_NGRAM_SIZES),
)


def _per_doc(doc: np.ndarray, weights: np.ndarray | None, ndocs: int) -> np.ndarray:
    return np.bincount(doc, weights=weights, minlength=ndocs).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``first``: whether each position is the first with its key, ``counts``: occurrences of each
    position's key).

    One ``np.sort`` of ``mixed-key-high-bits | position`` instead of an ``argsort`` (5x slower): equal
    keys end up adjacent, in position order, so a group's first element is the first occurrence.
    The key keeps its top ``64 - log2(positions)`` bits (>= 40 for a row group of text); a merge
    of two distinct n-grams by that truncation moves a share by one n-gram, which no rule notices.
    """
    n = keys.size
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    shift = np.uint64(max(n.bit_length(), 1))
    packed = np.sort(((splitmix64(keys) >> shift) << shift) | np.arange(n, dtype=np.uint64))
    position = (packed & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.int64)
    key = packed >> shift
    start = np.ones(n, dtype=bool)
    start[1:] = key[1:] != key[:-1]
    first = np.zeros(n, dtype=bool)
    first[position[start]] = True
    starts = np.flatnonzero(start)
    sizes = np.diff(np.append(starts, n))
    counts = np.empty(n, dtype=np.int64)
    counts[position] = np.repeat(sizes, sizes)
    return first, counts


def ngram_keys(ids: np.ndarray, doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit keys of every word n-gram that lies inside one document, and their start positions.

    The document index is folded into the key, so equal n-grams of different documents differ.
    """
    if doc.size < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    windows = doc.size - n + 1
    words = ids.astype(np.uint64)
    key = doc[:windows].astype(np.uint64) * _MIX
    for k in range(n):  # contiguous slices: every window at once, no gather
        key ^= words[k : k + windows]
        key *= _MIX
    starts = np.flatnonzero(doc[:windows] == doc[n - 1 :])
    return key[starts], starts


def _duplicate_ngram_chars(
    ids: np.ndarray, lengths: np.ndarray, doc: np.ndarray, n: int, ndocs: int
) -> np.ndarray:
    """Per document: characters of words covered by a second or later occurrence of an n-gram."""
    key, starts = ngram_keys(ids, doc, n)
    first, _ = first_occurrence(key)
    later = starts[~first]
    edges = np.bincount(later, minlength=ids.size + 1) - np.bincount(later + n, minlength=ids.size + 1)
    covered = np.cumsum(edges[: ids.size]) > 0
    return _per_doc(doc[covered], lengths[covered].astype(np.float64), ndocs)


def _top_ngram_chars(ids: np.ndarray, lengths: np.ndarray, doc: np.ndarray, n: int, ndocs: int) -> np.ndarray:
    """Per document: the largest ``occurrences x characters`` of any repeated n-gram."""
    key, starts = ngram_keys(ids, doc, n)
    first, counts = first_occurrence(key)
    prefix = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    chars = prefix[starts + n] - prefix[starts]
    keep = first & (counts > 1)
    out = np.zeros(ndocs, dtype=np.float64)
    np.maximum.at(out, doc[starts[keep]], (counts[keep] * chars[keep]).astype(np.float64))
    return out


def _repeated_pieces(pieces: Pieces, ndocs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document over non-blank pieces (lines or paragraphs): (pieces, duplicate pieces, chars,
    duplicate chars)."""
    trimmed = pc.utf8_trim_whitespace(pieces.flat)
    lengths = to_numpy(pc.utf8_length(trimmed)).astype(np.int64)
    nonblank = lengths > 0
    doc = pieces.doc[nonblank]
    codes = to_numpy(pc.dictionary_encode(trimmed.filter(pa.array(nonblank))).indices).astype(np.uint64)
    first, _ = first_occurrence((doc.astype(np.uint64) << np.uint64(32)) | codes)
    dup = ~first
    lens = lengths[nonblank].astype(np.float64)
    return (
        _per_doc(doc, None, ndocs),
        _per_doc(doc[dup], None, ndocs),
        _per_doc(doc, lens, ndocs),
        _per_doc(doc[dup], lens[dup], ndocs),
    )


def filter_lines(texts: pa.Array | pa.ChunkedArray, max_symbol_fraction: float) -> tuple[pa.Array, int, int]:
    """Drop lines in which more than ``max_symbol_fraction`` of the non-space characters are neither
    letters nor digits. Return the new texts, the lines seen and the lines dropped (blank lines are
    kept: they carry paragraph structure)."""
    texts = as_array(texts)
    lines = Pieces.of(pc.split_pattern(texts, "\n"))
    if max_symbol_fraction >= 1.0 or len(lines.flat) == 0:
        return texts, len(lines.flat), 0
    # After normalisation a line's only whitespace is spaces and tabs (rare Unicode spaces count
    # as symbols). Removing runs of letters, digits and spaces in one regex leaves the symbols;
    # counting single characters with a regex is ~5x slower.
    blanks = sum(to_numpy(pc.count_substring(lines.flat, c)) for c in (" ", "\t"))
    nonspace = (to_numpy(pc.utf8_length(lines.flat)) - blanks).astype(np.float64)
    symbols = to_numpy(pc.utf8_length(pc.replace_substring_regex(lines.flat, _LETTERS_DIGITS_SPACES, "")))
    drop = (nonspace > 0) & (_ratio(symbols.astype(np.float64), nonspace) > max_symbol_fraction)
    if not drop.any():
        return texts, len(lines.flat), 0
    kept_per_doc = lines.per_doc - np.bincount(lines.doc[drop], minlength=len(texts))
    offsets = pa.array(np.concatenate([[0], np.cumsum(kept_per_doc)]).astype(np.int32))
    rebuilt = pa.ListArray.from_arrays(offsets, lines.flat.filter(pa.array(~drop)))
    joined = pc.binary_join(rebuilt, "\n")
    joined = pc.utf8_trim_whitespace(pc.replace_substring_regex(joined, r"\n{4,}", "\n\n\n"))
    return joined, len(lines.flat), int(drop.sum())


def _threshold_list(values: list[float], sizes: tuple[int, ...], name: str) -> dict[int, float]:
    if len(values) != len(sizes):
        raise ValueError(f"{name} needs {len(sizes)} values (n = {sizes}), got {values}")
    return dict(zip(sizes, values, strict=True))


def quality_reasons(texts: pa.Array | pa.ChunkedArray, cfg: CleanConfig) -> list[str | None]:
    """The first Gopher rule each document fails, or ``None`` for a document that passes them all."""
    texts = as_array(texts)
    ndocs = len(texts)
    if ndocs == 0:
        return []
    fails: dict[str, np.ndarray] = {}
    words = split_words(texts)
    n_words = words.per_doc.astype(np.float64)
    lengths = to_numpy(pc.utf8_length(words.flat)).astype(np.int64)
    word_chars = _per_doc(words.doc, lengths.astype(np.float64), ndocs)
    fails["too_few_words"] = n_words < cfg.min_words
    fails["too_many_words"] = (n_words > cfg.max_words) if cfg.max_words else np.zeros(ndocs, bool)
    mean_length = _ratio(word_chars, n_words)
    fails["mean_word_length"] = (mean_length < cfg.min_mean_word_length) | (
        mean_length > cfg.max_mean_word_length
    )
    symbols = sum(to_numpy(pc.count_substring(texts, s)).astype(np.float64) for s in ("#", "...", "…"))
    fails["symbol_ratio"] = _ratio(symbols, n_words) > cfg.max_symbol_word_ratio

    lines = Pieces.of(pc.split_pattern(texts, "\n"))
    nonblank = to_numpy(pc.utf8_length(pc.utf8_trim_whitespace(lines.flat))) > 0
    n_lines = _per_doc(lines.doc[nonblank], None, ndocs)
    for rule, pattern, limit in (
        ("bullet_lines", _BULLET_LINE, cfg.max_bullet_line_fraction),
        ("ellipsis_lines", _ELLIPSIS_LINE, cfg.max_ellipsis_line_fraction),
    ):
        hits = to_numpy(pc.match_substring_regex(lines.flat, pattern)) & nonblank
        fails[rule] = _ratio(_per_doc(lines.doc[hits], None, ndocs), n_lines) > limit

    alpha = to_numpy(pc.match_substring_regex(words.flat, r"\pL"))
    fails["alpha_words"] = (
        _ratio(_per_doc(words.doc[alpha], None, ndocs), n_words) < cfg.min_alpha_word_fraction
    )
    lowered = pc.utf8_lower(words.flat)
    stop = to_numpy(pc.is_in(lowered, value_set=pa.array(STOP_WORDS)))
    fails["stop_words"] = _per_doc(words.doc[stop], None, ndocs) < cfg.min_stop_words

    for unit, split in (
        ("lines", lines),
        ("paragraphs", Pieces.of(pc.split_pattern_regex(texts, r"\n\s*\n"))),
    ):
        count, dup, chars, dup_chars = _repeated_pieces(split, ndocs)
        singular = unit[:-1]
        limit = cfg.max_duplicate_line_fraction if unit == "lines" else cfg.max_duplicate_paragraph_fraction
        char_limit = (
            cfg.max_duplicate_line_char_fraction
            if unit == "lines"
            else cfg.max_duplicate_paragraph_char_fraction
        )
        fails[f"duplicate_{unit}"] = _ratio(dup, count) > limit
        fails[f"duplicate_{singular}_chars"] = _ratio(dup_chars, chars) > char_limit

    ids = to_numpy(pc.dictionary_encode(lowered).indices).astype(np.int64)
    top = _threshold_list(cfg.max_top_ngram_char_fraction, TOP_NGRAM_SIZES, "max_top_ngram_char_fraction")
    for n, limit in top.items():
        fails[f"top_{n}gram"] = (
            _ratio(_top_ngram_chars(ids, lengths, words.doc, n, ndocs), word_chars) > limit
        )
    dup_limits = _threshold_list(
        cfg.max_duplicate_ngram_char_fraction, DUPLICATE_NGRAM_SIZES, "max_duplicate_ngram_char_fraction"
    )
    _duplicate_ngram_rules(ids, lengths, words.doc, word_chars, dup_limits, fails)

    reasons: list[str | None] = [None] * ndocs
    for rule in reversed(RULES):  # the earliest failing rule is written last, so it wins
        for i in np.flatnonzero(fails[rule]):
            reasons[i] = rule
    return reasons


def _duplicate_ngram_rules(
    ids: np.ndarray,
    lengths: np.ndarray,
    doc: np.ndarray,
    word_chars: np.ndarray,
    limits: dict[int, float],
    fails: dict[str, np.ndarray],
) -> None:
    """Duplicate n-gram shares for n = 5..10, computing the larger n only where they can matter.

    A later occurrence of an n-gram (n > 5) is made of later occurrences of its 5-grams, so the
    5-gram share bounds every larger one: a document at or under the smallest limit passes all six
    rules without computing them. On books that skips the five larger n almost always.
    """
    ndocs = word_chars.size
    share = _ratio(_duplicate_ngram_chars(ids, lengths, doc, min(limits), ndocs), word_chars)
    suspects = share > min(limits.values())
    for n, limit in limits.items():
        if n == min(limits):
            fails[f"duplicate_{n}gram"] = share > limit
            continue
        fails[f"duplicate_{n}gram"] = np.zeros(ndocs, dtype=bool)
        if suspects.any():
            sel = suspects[doc]
            sub = _ratio(_duplicate_ngram_chars(ids[sel], lengths[sel], doc[sel], n, ndocs), word_chars)
            fails[f"duplicate_{n}gram"] = suspects & (sub > limit)
