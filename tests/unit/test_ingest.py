from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_core.config import IngestConfig
from plm_core.data.ingest import NO_FILES, ingest, inputs_digest, resolve_inputs
from plm_core.data.shards import DOC_SCHEMA, ShardWriter, shard_files
from plm_core.errors import InputError


def _rows(out: Path) -> list[dict[str, str]]:
    return pa.concat_tables([pq.read_table(p) for p in shard_files(out)]).to_pylist()


def _out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def test_every_format_is_read_and_every_record_accounted_for(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("Alpha document.\nSecond line.\n")
    (corpus / "sub" / "b.txt.gz").write_bytes(gzip.compress(b"Beta document."))
    (corpus / "blank.txt").write_text("  \n\t\n")
    lines = [
        json.dumps({"text": "first record"}),
        "",
        json.dumps({"text": "   "}),
        json.dumps({"text": "with id", "id": "custom-7"}),
        json.dumps({"text": "int id", "id": 12}),
    ]
    (corpus / "c.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(corpus / "sub" / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "zipped record"}) + "\n")
    pq.write_table(pa.table({"text": ["pq one", "pq two"], "id": ["p1", None]}), corpus / "e.parquet")
    (corpus / "notes.md").write_text("ignored: unsupported suffix inside a directory")

    counts = ingest(IngestConfig(paths=[str(corpus)]), _out(tmp_path))
    rows = _rows(tmp_path / "out")

    assert counts["files"] == 6
    assert counts["records_in"] == 10
    assert counts["records_out"] == 8
    assert counts["rejected"] == {"empty": 2}
    assert counts["blank_lines"] == 1
    assert counts["records_in"] == counts["records_out"] + sum(counts["rejected"].values())
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["text"] == "Alpha document.\nSecond line.\n"
    assert by_id["b"]["text"] == "Beta document."
    assert by_id["c:1"]["text"] == "first record"
    assert by_id["custom-7"]["text"] == "with id"
    assert by_id["12"]["text"] == "int id"
    assert by_id["d:1"]["text"] == "zipped record"
    assert by_id["p1"]["text"] == "pq one"
    assert by_id["e:2"]["text"] == "pq two"
    assert by_id["a"]["source"] == str(corpus / "a.txt")
    # Sorted path order, whatever the directory listing order.
    assert [r["source"] for r in rows] == sorted(r["source"] for r in rows)


def test_txt_id_collisions_are_disambiguated_in_path_order(tmp_path: Path) -> None:
    for folder in ("x", "y", "z"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "book.txt").write_text(f"text in {folder}")
    ingest(
        IngestConfig(paths=[str(tmp_path / "z"), str(tmp_path / "x"), str(tmp_path / "y")]), _out(tmp_path)
    )
    assert [(r["id"], r["text"]) for r in _rows(tmp_path / "out")] == [
        ("book", "text in x"),
        ("book-2", "text in y"),
        ("book-3", "text in z"),
    ]


def test_resolve_inputs_files_dirs_globs(tmp_path: Path) -> None:
    (tmp_path / "d" / "deep").mkdir(parents=True)
    for name in ("d/b.txt", "d/deep/a.jsonl", "d/skip.csv", "d/.hidden.txt", "c.parquet", "g1.txt", "g2.txt"):
        (tmp_path / name).write_text("x")
    got = resolve_inputs([str(tmp_path / "g*.txt"), str(tmp_path / "d"), str(tmp_path / "c.parquet")])
    assert got == sorted(
        [tmp_path / "c.parquet", tmp_path / "d/b.txt", tmp_path / "d/deep/a.jsonl"]
        + [tmp_path / "g1.txt", tmp_path / "g2.txt"],
        key=str,
    )


def test_missing_path_and_no_supported_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as err:
        resolve_inputs([str(tmp_path / "nope")])
    assert err.value.path == str(tmp_path / "nope")
    (tmp_path / "only_csv").mkdir()
    (tmp_path / "only_csv" / "a.csv").write_text("x")
    with pytest.raises(InputError, match=NO_FILES):
        resolve_inputs([str(tmp_path / "only_csv")])
    with pytest.raises(InputError, match=NO_FILES):
        resolve_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(InputError, match="unsupported file type"):
        resolve_inputs([str(tmp_path / "only_csv" / "a.csv")])


def test_invalid_utf8_names_file_line_and_offset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline two\nline \xff three\n")
    with pytest.raises(InputError) as err:
        ingest(IngestConfig(paths=[str(bad)]), _out(tmp_path))
    assert str(err.value) == f"{bad}:3: not valid UTF-8 (byte offset 23)"


def test_invalid_utf8_in_jsonl_counts_offset_from_file_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    with pytest.raises(InputError) as err:
        ingest(IngestConfig(paths=[str(bad)]), _out(tmp_path))
    assert (err.value.path, err.value.line) == (str(bad), 2)
    assert "byte offset 25" in err.value.problem


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"text": "unterminated', "malformed JSON"),
        ('{"body": "no text field"}', "missing text field 'text'"),
        ('{"text": 42}', "text field 'text' is int, not a string"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "x", "id": [1]}', "id field 'id' is list"),
    ],
)
def test_bad_jsonl_record_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n\n" + line + "\n")
    with pytest.raises(InputError) as err:
        ingest(IngestConfig(paths=[str(path)]), _out(tmp_path))
    assert err.value.path == str(path)
    assert err.value.line == 3
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}:3: ")


def test_parquet_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(InputError, match="no column 'text'"):
        ingest(IngestConfig(paths=[str(path)]), _out(tmp_path))


def test_corpus_of_only_empty_documents_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(" \n ")
    (tmp_path / "b.jsonl").write_text('{"text": ""}\n\n')
    with pytest.raises(InputError, match="corpus is empty: no documents"):
        ingest(IngestConfig(paths=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]), _out(tmp_path))


def test_max_docs_and_rows_per_shard(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(25)))
    counts = ingest(IngestConfig(paths=[str(path)], max_docs=10, rows_per_shard=4), _out(tmp_path))
    assert counts["records_out"] == counts["records_in"] == 10
    assert [p.name for p in shard_files(tmp_path / "out")] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert [r["text"] for r in _rows(tmp_path / "out")] == [f"doc {i}" for i in range(10)]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_inputs_digest_follows_content_not_location(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "b.txt").write_text("beta")
    digest = inputs_digest(resolve_inputs([str(src)]))
    moved = shutil.copytree(src, tmp_path / "elsewhere" / "src")
    assert inputs_digest(resolve_inputs([str(moved)])) == digest
    assert inputs_digest(list(reversed(resolve_inputs([str(src)])))) == digest
    (src / "b.txt").write_text("beta!")
    assert inputs_digest(resolve_inputs([str(src)])) != digest


def test_shard_writer_row_groups_files_and_empty_table(tmp_path: Path) -> None:
    texts = [f"{i:04d}" + "x" * 96 for i in range(100)]  # 100 bytes each
    with ShardWriter(tmp_path / "parts", DOC_SCHEMA, row_group_bytes=1000, max_rows=45) as writer:
        for start in range(0, 100, 7):
            chunk = texts[start : start + 7]
            writer.write({"id": chunk, "source": ["s"] * len(chunk), "text": chunk})
    files = shard_files(tmp_path / "parts")
    assert [pq.ParquetFile(p).metadata.num_rows for p in files] == [45, 45, 10]
    groups = [
        pq.ParquetFile(p).metadata.row_group(i).num_rows
        for p in files
        for i in range(pq.ParquetFile(p).num_row_groups)
    ]
    assert max(groups) == 4 and groups.count(4) >= 20  # 4 rows of 201 string bytes fit in 1000, 5 do not
    assert [r["text"] for r in _rows(tmp_path / "parts")] == texts

    with ShardWriter(tmp_path / "empty", DOC_SCHEMA, template="one.parquet", write_empty=True):
        pass
    assert pq.read_table(tmp_path / "empty" / "one.parquet").num_rows == 0
