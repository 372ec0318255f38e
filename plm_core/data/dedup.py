"""Duplicate detection across the whole corpus: exact keys, MinHash signatures with LSH banding,
and the clusters they form.

Exact: a 16-byte hash of the text lowercased with whitespace runs collapsed.

Near: the shingles of a document are its word n-grams (lowercased, punctuation dropped). Its
signature is a one-permutation MinHash (Li, Owen & Zhang 2012) with rotation densification
(Shrivastava & Li 2014): one 64-bit hash per shingle picks a bucket and a value, each bucket keeps
its minimum, and an empty bucket borrows from the next non-empty one. The fraction of equal
buckets estimates Jaccard similarity like classic MinHash, but costs O(shingles) instead of
O(shingles x permutations). Written here in numpy, batched across documents, because that is
2-3.5x faster than datasketch's ``MinHash.update_batch`` given the same shingle hashes, on books
and on 1 KB documents alike (docs/benchmarks.md), and the LSH buckets are found by sorting band
hashes rather than by a Python dict per band.

LSH banding proposes candidate pairs; a pair is a near duplicate when its estimated similarity
reaches the acceptance threshold, and duplicate pairs are joined into clusters. The estimate's
standard deviation is sqrt(J(1-J)/num_perm) (0.035 at J = 0.8 with 128 buckets): accepting at the
threshold itself would catch pairs just above it only half the time, so acceptance sits 1.28
standard deviations lower and pairs at the threshold are caught 90% of the time.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plm_core.data.hashing import splitmix64
from plm_core.data.segments import to_numpy, words

# RE2 syntax (pyarrow): Unicode whitespace that survives normalisation.
_UNICODE_SPACE = r"[\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_PUNCTUATION = r"[^\p{L}\p{N}\s]+"
_LOW32 = np.uint64(0xFFFFFFFF)
EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # signature of a document without any word
# Recall of the LSH stage at the acceptance threshold; the verification after it decides precision.
_CANDIDATE_RECALL = 0.99
# One-sided 90% normal quantile: a pair exactly at the threshold passes verification 90% of the time.
_RECALL_Z = 1.2816


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


def _word_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Stable 64-bit hashes of each document's normalised words, and each word's document index.

    Words are hashed once per distinct word in the batch (blake2b over UTF-8), so a shingle's hash
    does not depend on which batch or process saw it.
    """
    found = words(pc.replace_substring_regex(pc.utf8_lower(texts), _PUNCTUATION, ""))
    encoded = pc.dictionary_encode(found.flat)
    vocab = np.array(
        [
            int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            for w in encoded.dictionary.to_pylist()
        ],
        dtype=np.uint64,
    )
    return vocab[to_numpy(encoded.indices)] if len(found.doc) else np.zeros(0, np.uint64), found.doc


def shingle_hashes(texts: pa.Array, ngram: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word ``ngram``-gram of each document, and each shingle's document.

    A document with fewer than ``ngram`` words is represented by its single words instead.
    """
    words, doc = _word_hashes(texts)
    n = words.size
    full = (
        np.flatnonzero(doc[: max(n - ngram + 1, 0)] == doc[ngram - 1 :]) if n >= ngram else np.zeros(0, int)
    )
    key = np.full(full.size, np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
    for k in range(ngram):
        key = splitmix64(key ^ words[full + k])
    short_docs = np.ones(len(texts), dtype=bool)
    short_docs[doc[full]] = False
    short = np.flatnonzero(short_docs[doc])
    short_keys = splitmix64(words[short] ^ np.uint64(seed))
    return np.concatenate([key, short_keys]), np.concatenate([doc[full], doc[short]])


def minhash_signatures(texts: pa.Array | pa.ChunkedArray, num_perm: int, ngram: int, seed: int) -> np.ndarray:
    """[docs, num_perm] uint64 densified one-permutation MinHash signatures (``EMPTY`` rows for
    documents without words)."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    ndocs = len(texts)
    shingles, doc = shingle_hashes(texts, ngram, seed)
    h = splitmix64(shingles ^ np.uint64(0xD6E8FEB86659FD93))
    bucket = (((h >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)).astype(np.int64)
    sig = np.full(ndocs * num_perm, EMPTY, dtype=np.uint64)
    np.minimum.at(sig, doc * num_perm + bucket, h & _LOW32)
    sig = sig.reshape(ndocs, num_perm)
    return _densify(sig)


def _densify(sig: np.ndarray) -> np.ndarray:
    """Rotation densification: an empty bucket j takes the next non-empty bucket k (circularly)
    plus ``(k - j) * 2**32``, so borrowed values never equal native 32-bit ones by accident."""
    empty = sig == EMPTY
    if not empty.any():
        return sig
    ndocs, p = sig.shape
    cols = np.arange(p)
    idx = np.where(empty, 2 * p, cols)
    both = np.concatenate([idx, np.where(empty, 2 * p, cols + p)], axis=1)
    nxt = np.minimum.accumulate(both[:, ::-1], axis=1)[:, ::-1][:, :p]  # next non-empty at or after j
    has_any = ~empty.all(axis=1)
    out = sig.copy()
    rows = np.flatnonzero(has_any & empty.any(axis=1))
    src = nxt[rows] % p
    dist = (nxt[rows] - cols).astype(np.uint64)
    out[rows] = np.take_along_axis(sig[rows], src, axis=1) + dist * np.uint64(1 << 32)
    return out


def acceptance_threshold(threshold: float, num_perm: int) -> float:
    """The estimated similarity a pair must reach: ``threshold`` lowered by 1.28 standard
    deviations of the estimate there, so that pairs *at* the threshold are kept as duplicates with
    probability 0.9 (instead of 0.5) and pairs above it almost surely. The price is that pairs a
    little below the threshold (0.755 - 0.8 for 0.8 and 128 buckets) are caught part of the time."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-dedup threshold must be in (0, 1], got {threshold}")
    return max(threshold - _RECALL_Z * math.sqrt(threshold * (1.0 - threshold) / num_perm), 1e-9)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest candidates) that still propose a pair at the
    acceptance threshold with probability >= 0.99; verification then removes the extras."""
    accept = acceptance_threshold(threshold, num_perm)
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - accept**rows) ** bands >= _CANDIDATE_RECALL:
            best = (bands, rows)
    return best


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[docs, bands] uint64: one hash per band of ``rows`` signature values."""
    out = np.zeros((sig.shape[0], bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(sig.shape[0], np.uint64(b + 1), dtype=np.uint64)
        for r in range(rows):
            h = splitmix64(h ^ sig[:, b * rows + r])
        out[:, b] = h
    return out


def candidate_pairs(bands: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """[pairs, 2] int64 (first, other): documents sharing a band with the first document of that
    band bucket, over ``eligible`` rows only, without repeats. Pairing every member with the
    bucket's first member (not all pairs) keeps a bucket of k documents at k-1 pairs."""
    rows = np.flatnonzero(eligible)
    found = []
    for b in range(bands.shape[1]):
        order = rows[np.argsort(bands[rows, b], kind="stable")]
        keys = bands[order, b]
        if keys.size < 2:
            continue
        start = np.ones(keys.size, dtype=bool)
        start[1:] = keys[1:] != keys[:-1]
        head = np.maximum.accumulate(np.where(start, np.arange(keys.size), 0))
        member = ~start
        found.append(np.stack([order[head[member]], order[member]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Share of equal signature values for each pair (``sig`` may be a memory map)."""
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        block = pairs[s : s + chunk]
        out[s : s + chunk] = (np.asarray(sig[block[:, 0]]) == np.asarray(sig[block[:, 1]])).mean(axis=1)
    return out


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Label of each of ``n`` nodes: the smallest node index of its component under ``edges``
    ([E, 2]). Hook-and-compress label propagation, vectorised: each round hooks every edge's two
    roots onto the smaller one, then pointer-jumps to the roots."""
    parent = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return parent
    u, v = edges[:, 0], edges[:, 1]
    while True:
        pu, pv = parent[u], parent[v]
        if (pu == pv).all():
            return parent
        low = np.minimum(pu, pv)
        np.minimum.at(parent, pu, low)
        np.minimum.at(parent, pv, low)
        while True:
            jumped = parent[parent]
            if (jumped == parent).all():
                break
            parent = jumped


@dataclass(frozen=True)
class Duplicates:
    """What dedup decided for each of ``n`` documents (in read order)."""

    kept: np.ndarray  # [n] index of the document kept for it (itself when it is kept)
    reason: np.ndarray  # [n] 0 kept, 1 exact duplicate, 2 near duplicate
    candidate_pairs: int
    near_pairs: int


KEPT, EXACT, NEAR = 0, 1, 2


def decide_duplicates(
    rank: np.ndarray,
    exact_keys: np.ndarray | None,
    bands: np.ndarray | None,
    signatures: np.ndarray | None,
    has_words: np.ndarray | None,
    threshold: float,
) -> Duplicates:
    """Cluster documents by exact key and by verified near-duplicate pairs; keep the lowest-ranked
    member of each cluster (``rank``: the document's position in (source, id) order, so the kept
    document does not depend on read order).

    ``exact_keys`` [n, 16] uint8 or None (no exact dedup); ``bands`` [n, B], ``signatures`` [n, P]
    and ``has_words`` [n] bool, or None (no near dedup). Near dedup compares one representative per
    exact group, among documents that have words at all.
    """
    n = rank.size
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)
    group = np.arange(n)
    edges = [np.zeros((0, 2), dtype=np.int64)]
    if exact_keys is not None and n:
        _, group = np.unique(
            np.ascontiguousarray(exact_keys).view(np.dtype((np.void, 16))).ravel(), return_inverse=True
        )
        group = group.ravel()
        low = np.full(group.max() + 1, n, dtype=np.int64)
        np.minimum.at(low, group, rank)
        representative = by_rank[low[group]]
        twins = np.flatnonzero(representative != np.arange(n))
        edges.append(np.stack([representative[twins], twins], axis=1))
    else:
        representative = np.arange(n)
    n_candidates = n_near = 0
    if bands is not None and signatures is not None and has_words is not None and n:
        eligible = (representative == np.arange(n)) & has_words
        pairs = candidate_pairs(bands, eligible)
        n_candidates = len(pairs)
        if n_candidates:
            accept = acceptance_threshold(threshold, signatures.shape[1])
            near = pairs[estimated_jaccard(signatures, pairs) >= accept]
            n_near = len(near)
            edges.append(near)
    label = connected_components(n, np.concatenate(edges))
    low = np.full(n, n, dtype=np.int64)
    np.minimum.at(low, label, rank)
    kept = by_rank[low[label]]
    reason = np.where(kept == np.arange(n), KEPT, np.where(group == group[kept], EXACT, NEAR))
    return Duplicates(kept, reason.astype(np.int8), n_candidates, n_near)


def clusters(kept: np.ndarray, reason: np.ndarray, rank: np.ndarray) -> list[tuple[int, str, np.ndarray]]:
    """``(kept index, kind, members in rank order)`` of every cluster with more than one member;
    kind is "near" when any member is a near duplicate, else "exact". Ordered by the kept
    document's rank."""
    dup = np.flatnonzero(reason != KEPT)
    if dup.size == 0:
        return []
    heads = np.unique(kept[dup])
    members = np.concatenate([heads, dup])
    owner = kept[members]
    order = np.lexsort((rank[members], rank[owner]))
    members, owner = members[order], owner[order]
    cuts = np.flatnonzero(np.diff(owner)) + 1
    out = []
    for group in np.split(members, cuts):
        kind = "near" if (reason[group] == NEAR).any() else "exact"
        out.append((int(group[0]), kind, group))
    return out
