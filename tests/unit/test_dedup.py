"""Exact and near dedup: a planted corpus through ingest + clean, and the pieces (signatures, LSH,
clusters) on their own."""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_core.config import CleanConfig, IngestConfig
from plm_core.data.clean import CLUSTERS_FILE, clean
from plm_core.data.dedup import (
    acceptance_threshold,
    connected_components,
    estimated_jaccard,
    lsh_params,
    minhash_signatures,
)
from plm_core.data.ingest import ingest
from plm_core.data.quality import RULES
from plm_core.data.shards import shard_files
from tests.unit.test_clean import FOOTER, HEADER

N_DISTINCT, N_EXACT, N_NEAR = 240, 20, 60
EDIT_WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "zeta"]
JUNK = {
    "junk_bullets": "\n".join(
        f"• remember buying vegetables {i} for the dinner with friends" for i in range(30)
    ),
    "junk_numbers": " ".join(f"{i * 7919 + 1009} {i * 104729 + 7} {i * 13 + 1000} the" for i in range(40)),
    "junk_spam": "\n".join(["BUY NOW and save with the best offers of the year"] * 40),
    "junk_no_stop_words": "river garden window letter morning silver captain village " * 12,
}


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The shingle definition dedup uses: lowercased words without punctuation, word n-grams."""
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _book(data_text: Callable[..., str], seed: int) -> str:
    return "\n\n".join(textwrap.fill(p, 70) for p in data_text(seed, paragraphs=6).split("\n\n"))


def _edit(text: str, rate: float, rng: random.Random) -> str:
    """Replace about ``rate`` of the words, keeping the line layout."""
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(i, j) for i, line in enumerate(lines) for j, w in enumerate(line) if w]
    for i, j in rng.sample(slots, int(len(slots) * rate)):
        lines[i][j] = rng.choice(EDIT_WORDS)
    return "\n".join(" ".join(line) for line in lines)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tests.unit.conftest import _make_data_text as data_text

    rng = random.Random(7)
    root = tmp_path_factory.mktemp("planted")
    corpus = root / "corpus"
    corpus.mkdir()
    docs = {f"doc_{i:03d}": _book(data_text, 5000 + i) for i in range(N_DISTINCT)}
    exact = {f"exact_{i:03d}": i for i in rng.sample(range(N_DISTINCT), N_EXACT)}
    near = {f"near_{i:03d}": i for i in rng.sample(range(N_DISTINCT), N_NEAR)}
    texts = dict(docs)
    for name, i in exact.items():
        original = docs[f"doc_{i:03d}"]
        texts[name] = original if i % 2 else "  " + original.upper().replace(" ", "  ") + "\n"
    for name, i in near.items():
        texts[name] = _edit(docs[f"doc_{i:03d}"], rng.uniform(0.0, 0.04), rng)
    texts.update(JUNK)
    texts["pg_wrapped_copy"] = HEADER + docs["doc_000"].replace("\n", "\r\n") + FOOTER
    for i in range(4):
        texts[f"pg_book_{i}"] = HEADER + _book(data_text, 9000 + i) + FOOTER
    texts["tiny"] = "Too short to keep."
    for name, text in texts.items():
        (corpus / f"{name}.txt").write_text(text)
    ingest_dir, clean_dir = root / "ingest", root / "clean"
    ingest_dir.mkdir()
    clean_dir.mkdir()
    # Several shards, so that two clean workers get several tasks to share.
    ingest_counts = ingest(IngestConfig(paths=[str(corpus)], rows_per_shard=60), ingest_dir)
    counts = clean(ingest_dir, CleanConfig(num_workers=1, validation_fraction=0.1), clean_dir)
    rejects = {r["id"]: r for r in pq.read_table(clean_dir / "rejects.parquet").to_pylist()}
    return dict(
        texts=texts,
        exact=exact,
        near=near,
        ingest_counts=ingest_counts,
        counts=counts,
        rejects=rejects,
        clean_dir=clean_dir,
        ingest_dir=ingest_dir,
    )


def test_every_record_is_accounted_for(planted: dict) -> None:
    ingest_counts, counts = planted["ingest_counts"], planted["counts"]
    assert ingest_counts["records_in"] == ingest_counts["records_out"] == len(planted["texts"])
    assert counts["records_in"] == len(planted["texts"])
    assert counts["records_in"] == counts["train"] + counts["validation"] + sum(counts["rejected"].values())
    assert len(planted["rejects"]) == sum(counts["rejected"].values())
    kept = [
        r["id"]
        for split in ("train", "validation")
        for p in shard_files(planted["clean_dir"] / split)
        for r in pq.read_table(p, columns=["id"]).to_pylist()
    ]
    assert len(kept) == counts["train"] + counts["validation"]
    assert not set(kept) & set(planted["rejects"])
    assert set(kept) | set(planted["rejects"]) == set(planted["texts"])
    lines = counts["lines"]
    assert lines["in"] == lines["out"] + sum(lines["removed"].values())


def test_exact_duplicates_point_at_the_kept_original(planted: dict) -> None:
    rejects = planted["rejects"]
    for name, i in planted["exact"].items():
        assert rejects[name]["reason"] == "exact_duplicate", name
        assert rejects[name]["duplicate_of"] == f"doc_{i:03d}"
    assert rejects["pg_wrapped_copy"]["reason"] == "exact_duplicate"  # equal once the licence is stripped
    assert rejects["pg_wrapped_copy"]["duplicate_of"] == "doc_000"


def test_near_duplicates_recall_and_false_positives(planted: dict) -> None:
    texts, rejects = planted["texts"], planted["rejects"]
    similar = {
        name: jaccard(texts[f"doc_{i:03d}"], texts[name])
        for name, i in planted["near"].items()
        if f"doc_{i:03d}" not in rejects
    }
    high = [name for name, j in similar.items() if j >= 0.8]
    # An edit that changed no word leaves an exact copy, caught as such.
    caught = [
        name for name in high if rejects.get(name, {}).get("reason") in ("near_duplicate", "exact_duplicate")
    ]
    assert len(high) >= 30, sorted(similar.values())  # the planted edits cover the range above 0.8
    assert len(caught) / len(high) >= 0.9, {n: similar[n] for n in set(high) - set(caught)}
    for name in caught:
        assert rejects[name]["duplicate_of"] == f"doc_{planted['near'][name]:03d}"
    distinct = [f"doc_{i:03d}" for i in range(N_DISTINCT)]
    false_positives = [d for d in distinct if rejects.get(d, {}).get("reason", "").endswith("duplicate")]
    assert len(false_positives) / len(distinct) <= 0.01, false_positives


def test_junk_is_rejected_with_its_rule_and_boilerplate_stripped(planted: dict) -> None:
    rejects, counts = planted["rejects"], planted["counts"]
    assert {name: rejects[name]["reason"] for name in JUNK} == {
        "junk_bullets": "bullet_lines",
        "junk_numbers": "alpha_words",
        "junk_spam": "duplicate_lines",
        "junk_no_stop_words": "stop_words",
    }
    assert all(rejects[name]["duplicate_of"] is None for name in JUNK)
    assert rejects["tiny"]["reason"] == "too_short"
    assert set(counts["rejected"]) <= {"too_short", "exact_duplicate", "near_duplicate", *RULES}
    assert counts["gutenberg_stripped"] == 5
    kept = {
        r["id"]: r["text"]
        for split in ("train", "validation")
        for p in shard_files(planted["clean_dir"] / split)
        for r in pq.read_table(p).to_pylist()
    }
    for i in range(4):
        assert "Gutenberg" not in kept[f"pg_book_{i}"] and "START OF" not in kept[f"pg_book_{i}"]


def test_clusters_table_lists_every_duplicate_once(planted: dict) -> None:
    table = pq.read_table(planted["clean_dir"] / CLUSTERS_FILE).to_pylist()
    rejects = planted["rejects"]
    members = [m for row in table for m in row["member_ids"]]
    assert len(members) == len(set(members))
    duplicates = {n for n, r in rejects.items() if r["reason"].endswith("duplicate")}
    assert {m for row in table for m in row["member_ids"][1:]} == duplicates
    for row in table:
        assert row["member_ids"][0] == row["kept_id"] not in rejects
        assert row["size"] == len(row["member_ids"]) >= 2
        assert all(rejects[m]["duplicate_of"] == row["kept_id"] for m in row["member_ids"][1:])
        kinds = {rejects[m]["reason"] for m in row["member_ids"][1:]}
        assert row["kind"] == ("near" if "near_duplicate" in kinds else "exact")
    assert [row["cluster_id"] for row in table] == list(range(len(table)))
    dedup = planted["counts"]["dedup"]
    assert dedup["clusters"] == len(table)
    assert dedup["exact_duplicates"] + dedup["near_duplicates"] == len(duplicates)


def test_two_workers_write_the_same_bytes(planted: dict, tmp_path: Path) -> None:
    out = tmp_path / "clean2"
    out.mkdir()
    counts = clean(planted["ingest_dir"], CleanConfig(num_workers=2, validation_fraction=0.1), out)
    assert counts == planted["counts"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(planted["clean_dir"]) for p in planted["clean_dir"].rglob("*") if p.is_file()
    )
    for f in files:
        assert (out / f).read_bytes() == (planted["clean_dir"] / f).read_bytes(), f


def test_signature_estimates_jaccard(data_text: Callable[..., str]) -> None:
    rng = random.Random(3)
    base = [_book(data_text, 100 + i) for i in range(40)]
    edited = [_edit(t, rng.uniform(0.0, 0.1), rng) for t in base]
    sig = minhash_signatures(pa.array(base + edited), num_perm=256, ngram=5, seed=0)
    est = estimated_jaccard(sig, np.array([[i, 40 + i] for i in range(40)]))
    exact = np.array([jaccard(a, b) for a, b in zip(base, edited, strict=True)])
    assert np.abs(est - exact).mean() < 0.03
    assert np.abs(est - exact).max() < 0.12
    unrelated = estimated_jaccard(sig, np.array([[i, (i + 1) % 40] for i in range(40)]))
    assert unrelated.max() < 0.1


def test_short_and_empty_documents_get_signatures() -> None:
    sig = minhash_signatures(pa.array(["two words", "Two words!", "", "other words"]), 64, 5, 0)
    assert (sig[0] == sig[1]).all()  # punctuation and case do not matter
    assert (sig[2] == np.iinfo(np.uint64).max).all()  # no words: the EMPTY row
    assert (sig[0] != sig[3]).any()


def test_lsh_params_favour_recall_at_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9):
        accept = acceptance_threshold(threshold, 128)
        assert threshold - 0.06 < accept < threshold
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert 1 - (1 - accept**rows) ** bands >= 0.99
        assert 1 - (1 - 0.3**rows) ** bands < 0.25 or threshold < 0.6
    with pytest.raises(ValueError):
        lsh_params(0.0, 128)


def test_pairs_at_the_threshold_are_caught_nine_times_in_ten() -> None:
    """Simulated signature agreement for pairs of known similarity: the acceptance rule keeps
    ~90% of pairs exactly at the threshold and nearly all pairs 0.05 above it."""
    rng = np.random.default_rng(0)
    accept = acceptance_threshold(0.8, 128)
    for similarity, low in ((0.8, 0.86), (0.85, 0.98)):
        agree = rng.binomial(128, similarity, size=20_000) / 128
        assert (agree >= accept).mean() >= low


def test_connected_components_chains_and_singletons() -> None:
    edges = np.array([[5, 6], [1, 2], [2, 3], [6, 7], [3, 0]])
    assert connected_components(9, edges).tolist() == [0, 0, 0, 0, 4, 5, 5, 5, 8]
    assert connected_components(3, np.zeros((0, 2), np.int64)).tolist() == [0, 1, 2]
