from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_core.config import IngestConfig
from plm_core.data.ingest import NO_FILES, ingest, inputs_digest, resolve_inputs, source_digest
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


def _rejects(out: Path) -> list[dict[str, str]]:
    return pq.read_table(out / "rejects.parquet").to_pylist()


def test_binary_file_is_an_error_or_a_counted_reject(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "good.txt").write_text("fine text")
    (corpus / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (corpus / "packed.jsonl").write_bytes(b'{"text": "a"}\n\x00\x01\x02')
    with pytest.raises(InputError, match=r"image\.txt: binary content \(NUL byte at offset 8\)"):
        ingest(IngestConfig(paths=[str(corpus)]), _out(tmp_path))
    counts = ingest(IngestConfig(paths=[str(corpus)], bad_records="skip"), tmp_path / "skip")
    assert counts["rejected"] == {"binary": 2}
    assert (counts["records_in"], counts["records_out"]) == (3, 1)
    assert {(r["id"], r["reason"]) for r in _rejects(tmp_path / "skip")} == {
        ("image", "binary"),
        ("packed", "binary"),
    }


def test_invalid_utf8_can_be_replaced_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 and more")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "bad \xff byte"}\n')
    cfg = IngestConfig(paths=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], encoding_errors="replace")
    counts = ingest(cfg, _out(tmp_path))
    assert counts["decode_replaced"] == 2
    assert counts["records_out"] == 3 and counts["rejected"] == {}
    texts = {r["id"]: r["text"] for r in _rows(tmp_path / "out")}
    assert texts["a"] == "caf\ufffd and more"
    assert texts["b:2"] == "bad \ufffd byte"


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "ok.txt").write_text("something")
    counts = ingest(IngestConfig(paths=[str(tmp_path)]), _out(tmp_path))
    assert (counts["files"], counts["records_in"], counts["records_out"]) == (3, 2, 1)
    assert counts["rejected"] == {"empty": 1}
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.parquet: not a readable Parquet file"):
        ingest(IngestConfig(paths=[str(tmp_path)]), tmp_path / "again")


def test_corrupt_parquet_names_the_file_or_is_counted(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 50 for i in range(3000)]}), good, row_group_size=500)
    data = bytearray(good.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)  # wipe part of a middle row group
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        ingest(IngestConfig(paths=[str(bad)]), _out(tmp_path))
    assert err.value.path == str(bad)
    counts = ingest(IngestConfig(paths=[str(bad)], bad_records="skip"), tmp_path / "skip")
    assert counts["rejected"] == {"unreadable_parquet": 1}
    assert 0 < counts["records_out"] < 3000
    assert counts["records_in"] == counts["records_out"] + 1


def test_malformed_jsonl_lines_can_be_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"text": "good one"}',
                '{"text": broken',
                "[1, 2]",
                '{"body": "no text"}',
                '{"text": 5}',
                '{"text": "bad id", "id": {"x": 1}}',
                '{"text": "good two"}',
            ]
        )
        + "\n"
    )
    counts = ingest(IngestConfig(paths=[str(path)], bad_records="skip"), _out(tmp_path))
    assert counts["rejected"] == {
        "bad_id_type": 1,
        "bad_text_type": 1,
        "malformed_json": 1,
        "missing_text": 1,
        "not_an_object": 1,
    }
    assert counts["records_in"] == 7 and counts["records_out"] == 2
    assert {r["id"]: r["reason"] for r in _rejects(tmp_path / "out")}["mixed:2"] == "malformed_json"


def test_a_200_mb_line_is_rejected_without_being_held(tmp_path: Path) -> None:
    """One 200 MB JSONL line among normal ones: a counted ``too_large`` reject, read in bounded
    chunks (the ingesting process's peak RSS grows by far less than the line's size)."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "before"}\n{"text": "')
        block = b"x" * (1 << 20)
        for _ in range(200):
            f.write(block)
        f.write(b'"}\n{"text": "after"}\n')
    big_txt = tmp_path / "big.txt"
    big_txt.write_bytes(b"y" * 5000)
    code = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from plm_core.config import IngestConfig\n"
        "from plm_core.data.ingest import ingest\n"
        "out = Path(sys.argv[1]); out.mkdir()\n"
        "cfg = IngestConfig(paths=sys.argv[2:], max_record_bytes=4096)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "counts = ingest(cfg, out)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'counts': counts, 'before_kb': before, 'after_kb': after}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out"), str(path), str(big_txt)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["counts"]["rejected"] == {"too_large": 2}
    assert result["counts"]["records_out"] == 2
    assert result["after_kb"] - result["before_kb"] < 50 * 1024, result  # the line alone is 200 MB
    assert sorted(r["text"] for r in _rows(tmp_path / "out")) == ["after", "before"]
    assert {r["id"] for r in _rejects(tmp_path / "out")} == {"big", "huge:2"}


def test_default_record_limit_rejects_a_200_mb_line(tmp_path: Path) -> None:
    """The default limit (64 MiB) stops a 200 MB line at the reader as well."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "')
        f.write(b"z" * (200 << 20))
        f.write(b'"}\n{"text": "kept"}\n')
    counts = ingest(IngestConfig(paths=[str(path)]), _out(tmp_path))
    assert counts["rejected"] == {"too_large": 1} and counts["records_out"] == 1


def test_hf_json_builder_streaming_and_saved_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"record {i}", "id": f"r{i}"}) + "\n" for i in range(5)))
    cfg = IngestConfig(hf_dataset="json", hf_data_files=[str(data)], hf_split="train")
    counts = ingest(cfg, _out(tmp_path))
    assert counts["records_out"] == 5
    rows = _rows(tmp_path / "out")
    assert [(r["id"], r["text"]) for r in rows] == [(f"r{i}", f"record {i}") for i in range(5)]
    assert rows[0]["source"] == "hf:json:train"

    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["one", "two", None, ""]})}
    ).save_to_disk(str(saved))
    with pytest.raises(InputError, match="text is null"):
        ingest(IngestConfig(hf_dataset=str(saved)), tmp_path / "strict")
    counts = ingest(IngestConfig(hf_dataset=str(saved), bad_records="skip"), tmp_path / "saved_out")
    assert counts["rejected"] == {"bad_text_type": 1, "empty": 1}
    assert [r["id"] for r in _rows(tmp_path / "saved_out")] == ["saved:1", "saved:2"]
    with pytest.raises(InputError, match="has no split 'test'"):
        ingest(IngestConfig(hf_dataset=str(saved), hf_split="test"), tmp_path / "nosplit")


def test_hf_errors_name_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(InputError, match=r"^hf:json:train: "):
        ingest(IngestConfig(hf_dataset="json", hf_data_files=[str(bad)]), _out(tmp_path))
    with pytest.raises(InputError, match="no input paths and no hf_dataset"):
        ingest(IngestConfig(), tmp_path / "none")


def test_source_digest_covers_hf_data_files(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    cfg = IngestConfig(hf_dataset="json", hf_data_files=[str(data)])
    first = source_digest(cfg)
    assert source_digest(cfg) == first
    assert source_digest(IngestConfig(hf_dataset="json", hf_data_files=[str(data)], hf_split="x")) != first
    data.write_text('{"text": "b"}\n')
    assert source_digest(cfg) != first
    (tmp_path / "t.txt").write_text("t")
    assert source_digest(IngestConfig(paths=[str(tmp_path / "t.txt")])) == inputs_digest([tmp_path / "t.txt"])
