from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_core.config import CleanConfig, IngestConfig
from plm_core.data.clean import CLUSTERS_FILE, clean
from plm_core.data.dedup import dedup_keys
from plm_core.data.gutenberg import locate_boilerplate, strip_gutenberg
from plm_core.data.ingest import ingest
from plm_core.data.normalize import normalize_batch
from plm_core.data.shards import DOC_SCHEMA, ShardWriter, shard_files
from plm_core.errors import ConfigError

HEADER = (
    "The Project Gutenberg EBook of Tests, by Someone\r\n\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK TESTS ***\r\n\r\n\r\n\r\n"
    "Produced by A. Volunteer and the Online Distributed\r\nProofreading Team at http://www.pgdp.net\r\n\r\n\r\n"
)
FOOTER = (
    "\r\n\r\nEnd of the Project Gutenberg EBook of Tests, by Someone\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK TESTS ***\r\n\r\n"
    "***** This file should be named 1.txt *****\r\n"
    "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm electronic works\r\n"
)
OLD_HEADER = (
    "*Project Gutenberg Etext of Old Tests, by Nobody*\n\n"
    "Please take a look at the important information in this header.\n\n"
    "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\n"
    'Why is this "Small Print!" statement here?  You know: lawyers.\n'
    "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n"
    "This etext was prepared by Somebody Careful.\n\n\n"
)


def _write_ingest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """An ingest-stage directory holding (id, source, text) rows in the given order."""
    path.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path, DOC_SCHEMA) as w:
        w.write({"id": [r[0] for r in rows], "source": [r[1] for r in rows], "text": [r[2] for r in rows]})
    return path


def _read(directory: Path) -> list[dict[str, str]]:
    files = shard_files(directory)
    return pa.concat_tables([pq.read_table(p) for p in files]).to_pylist() if files else []


def _clean(tmp_path: Path, ingest_dir: Path, **overrides: object) -> tuple[dict, Path]:
    """Clean with one worker; sentence-sized test texts are below the quality rules' word counts,
    so tests of other behaviour switch those rules off (test_quality.py covers them)."""
    out = tmp_path / "clean"
    out.mkdir()
    cfg = CleanConfig(**{"min_chars": 10, "num_workers": 1, "quality_filter": False, **overrides})
    return clean(ingest_dir, cfg, out), out


def test_normalize_batch_rules() -> None:
    raw = "Cafe\u0301 \x00bell\x07 esc\x1b\r\nline  with\t\t runs   \r\n\ttab kept\rtrailing   \n\n\n\n\n\nend\ufeff  "
    texts, stripped = normalize_batch(pa.array([raw]), strip_boilerplate=True)
    assert texts.to_pylist() == ["Café bell esc\nline with runs\n\ttab kept\ntrailing\n\n\nend"]
    assert stripped == 0


def test_dedup_keys_match_lowercase_whitespace_collapse() -> None:
    texts = [
        "Hello  World\n\nfoo\tbar",
        "hello world foo bar",
        " HELLO\u00a0world\u3000foo \u2028 bar ",
        "hello world foo bars",
        "Ünïcode ÉTÉ",
        "ünïcode été",
        "",
    ]
    normalized, _ = normalize_batch(pa.array(texts), strip_boilerplate=False)
    keys = dedup_keys(pa.chunked_array([normalized.slice(0, 3), normalized.slice(3)]))
    reference = [
        hashlib.blake2b(" ".join(t.lower().split()).encode(), digest_size=16).digest() for t in texts
    ]
    assert keys == reference
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert keys[4] == keys[5]


def test_strip_gutenberg_modern_synthetic_book(data_text: Callable[..., str]) -> None:
    body = data_text(1)
    text, found = strip_gutenberg(HEADER + body.replace("\n", "\r\n") + FOOTER)
    assert found
    assert text == body.replace("\n", "\r\n")


def test_strip_gutenberg_old_small_print_and_title_footer(data_text: Callable[..., str]) -> None:
    body = data_text(2)
    text, found = strip_gutenberg(
        OLD_HEADER + body + "\n\n\n*Project Gutenberg Etext of Old Tests, by Nobody*\n"
    )
    assert found
    assert text == body


def test_strip_gutenberg_leaves_other_text_alone(data_text: Callable[..., str]) -> None:
    plain = data_text(3) + "\n\nGutenberg printed the first Bible around 1455."
    assert strip_gutenberg(plain) == (plain, False)
    assert locate_boilerplate(plain).header_end is None


@pytest.mark.parametrize(
    ("name", "starts", "ends"),
    [
        (
            "austen_jane__emma.txt",
            "EMMA\n\nBy Jane Austen",
            "the perfect happiness of the union.\n\n\n\nFINIS",
        ),
        ("nesbit_e_edith__five_children_and_it.txt", "FIVE CHILDREN AND IT", "But I must say no more."),
        ("shakespeare_william__a_midsummer_night_s_dream.txt", "1596\n\nA MIDSUMMER", "THE END"),
    ],
)
def test_strip_gutenberg_real_books(data_shared_dir: Path, name: str, starts: str, ends: str) -> None:
    raw = (data_shared_dir / "corpus" / "gutenberg" / name).read_text(encoding="utf-8")
    text, found = strip_gutenberg(raw.replace("\r\n", "\n"))
    assert found
    assert text.startswith(starts)
    assert text.endswith(ends)
    for boilerplate in (
        "*** START OF",
        "*** END OF",
        "SMALL PRINT",
        "Gutenberg-tm",
        "<<THIS ELECTRONIC VERSION",
    ):
        assert boilerplate not in text
    assert len(text) > 0.8 * len(raw) - 25_000


def test_accounting_filters_and_planted_duplicates(tmp_path: Path, data_text: Callable[..., str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {f"doc{i}": data_text(10 + i) for i in range(8)}
    texts["doc3_copy"] = texts["doc3"]  # byte-identical
    texts["doc5_variant"] = "  " + texts["doc5"].upper().replace(" ", "  \t") + "\n\n"  # case/space variant
    texts["tiny"] = "Too short."
    texts["huge"] = data_text(99, paragraphs=40)
    texts["gutenberg_book"] = HEADER + data_text(50) + FOOTER
    for name, text in texts.items():
        (corpus / f"{name}.txt").write_text(text)
    ingest_dir = tmp_path / "ingest"
    ingest_dir.mkdir()
    ingest(IngestConfig(paths=[str(corpus)]), ingest_dir)

    counts, out = _clean(tmp_path, ingest_dir, min_chars=50, max_chars=5000)

    assert counts["records_in"] == len(texts) == 13
    assert counts["rejected"] == {"exact_duplicate": 2, "too_long": 1, "too_short": 1}
    assert counts["train"] + counts["validation"] == 9
    assert counts["records_in"] == counts["train"] + counts["validation"] + sum(counts["rejected"].values())
    assert counts["gutenberg_stripped"] == 1
    rejects = {r["id"]: r for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects["doc3_copy"]["reason"] == "exact_duplicate"
    assert rejects["doc3_copy"]["duplicate_of"] == "doc3"
    assert rejects["doc5_variant"]["duplicate_of"] == "doc5"
    assert rejects["tiny"] == {
        "id": "tiny",
        "source": str(corpus / "tiny.txt"),
        "reason": "too_short",
        "duplicate_of": None,
    }
    assert rejects["huge"]["reason"] == "too_long"
    kept = _read(out / "train") + _read(out / "validation")
    assert sorted(r["id"] for r in kept) == sorted(set(texts) - set(rejects))
    by_id = {r["id"]: r["text"] for r in kept}
    assert by_id["doc0"] == texts["doc0"]
    assert "Gutenberg" not in by_id["gutenberg_book"]
    assert counts["bytes_out"] == sum(len(t.encode()) for t in by_id.values())
    assert counts["bytes_in"] == sum(len(t.encode()) for t in texts.values())


def test_duplicate_kept_is_smallest_source_then_id_not_first_read(tmp_path: Path) -> None:
    text = "The same paragraph of text appears twice in this corpus."
    ingest_dir = _write_ingest(
        tmp_path / "ingest",
        [
            ("b:2", "b.jsonl", text),
            ("a:9", "a.jsonl", text.lower()),
            ("a:10", "a.jsonl", text),
            ("c", "c.txt", "x" * 20),
        ],
    )
    counts, out = _clean(tmp_path, ingest_dir)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert {r["id"]: r["duplicate_of"] for r in rejects} == {"b:2": "a:10", "a:9": "a:10"}
    assert counts["rejected"] == {"exact_duplicate": 2}


def test_exact_dedup_can_be_switched_off(tmp_path: Path) -> None:
    rows = [(f"d{i}", "s", "identical text, over ten chars") for i in range(3)]
    counts, _ = _clean(
        tmp_path, _write_ingest(tmp_path / "ingest", rows), exact_dedup=False, near_dedup=False
    )
    assert counts["train"] + counts["validation"] == 3
    assert counts["rejected"] == {}


def test_split_is_deterministic_and_always_has_validation(
    tmp_path: Path, data_text: Callable[..., str]
) -> None:
    rows = [(f"doc{i}", "s.jsonl", data_text(i)) for i in range(30)]
    ingest_dir = _write_ingest(tmp_path / "ingest", rows)
    counts, out = _clean(tmp_path, ingest_dir, validation_fraction=0.0)
    assert (counts["train"], counts["validation"]) == (29, 1)
    assert pq.read_table(out / "rejects.parquet").num_rows == 0

    first = tmp_path / "first"
    second = tmp_path / "second"
    for target in (first, second):
        target.mkdir()
        clean(
            ingest_dir,
            CleanConfig(min_chars=10, validation_fraction=0.3, split_seed=7, num_workers=1),
            target,
        )
    files = sorted(p.relative_to(first) for p in first.rglob("*.parquet"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.parquet"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    validation = {r["id"] for r in _read(first / "validation")}
    assert 3 <= len(validation) <= 16  # ~9 expected from a 0.3 fraction of 30

    # A document's split depends on its own id only: dropping others does not move it.
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    ingest_few = _write_ingest(tmp_path / "ingest_few", rows[:15])
    clean(ingest_few, CleanConfig(min_chars=10, validation_fraction=0.3, split_seed=7, num_workers=1), fewer)
    assert {r["id"] for r in _read(fewer / "validation")} == {i for i in validation if int(i[3:]) < 15}


def test_shards_follow_target_size(tmp_path: Path, data_text: Callable[..., str]) -> None:
    rows = [(f"doc{i:03d}", "s.jsonl", data_text(i, paragraphs=6)) for i in range(60)]
    counts, out = _clean(tmp_path, _write_ingest(tmp_path / "ingest", rows), target_shard_bytes=8000)
    parts = shard_files(out / "train")
    assert counts["shards"]["train"] == len(parts) > 3
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert all(p.stat().st_size < 3 * 8000 for p in parts)
    assert [r["id"] for r in _read(out / "train")] == sorted(r["id"] for r in _read(out / "train"))
    assert not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in out.iterdir()) == [CLUSTERS_FILE, "rejects.parquet", "train", "validation"]


def test_bad_config_is_a_config_error(tmp_path: Path) -> None:
    ingest_dir = _write_ingest(tmp_path / "ingest", [("a", "s", "some text here")])
    with pytest.raises(ConfigError, match="validation_fraction"):
        _clean(tmp_path, ingest_dir, validation_fraction=1.0)


def test_real_gutenberg_byte_identical_twins_are_caught(tmp_path: Path, data_shared_dir: Path) -> None:
    folder = data_shared_dir / "corpus" / "gutenberg"
    twins = {
        "tolkien_j_r_r_john_ronald_reuel__a_spring_harvest": "smith_geoffrey_bache__a_spring_harvest_english",
        "plato__apology": "jowett_benjamin__apology",
        "maude_louise__father_sergius": "maude_aylmer__father_sergius",
    }
    names = [*twins, *twins.values(), "austen_jane__lady_susan"]
    ingest_dir = tmp_path / "ingest"
    ingest_dir.mkdir()
    ingest(IngestConfig(paths=[str(folder / f"{n}.txt") for n in names]), ingest_dir)
    counts, out = _clean(tmp_path, ingest_dir, min_chars=200)
    assert counts["rejected"] == {"exact_duplicate": 3}
    assert (counts["train"], counts["validation"]) == (3, 1)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert {r["id"]: r["duplicate_of"] for r in rejects} == twins
