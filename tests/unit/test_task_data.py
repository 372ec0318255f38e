"""Reading classification files: label rules and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plm_core.errors import InputError
from plm_core.finetune.task_data import (
    encode_for_classification,
    length_sorted_batches,
    load_classification,
    pad_batch,
)


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_sst2_integer_labels_get_sentiment_names(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"sentence": "great", "label": 1},
            {"sentence": "awful", "label": 0},
            {"sentence": "fine", "label": 1},
        ],
    )
    data = load_classification(path)
    assert data.texts == ["great", "awful", "fine"]
    assert data.label_ids == [1, 0, 1]
    assert data.label_names == ["negative", "positive"]


def test_string_labels_discovered_sorted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"text": "a", "y": "sports"}, {"text": "b", "y": "arts"}, {"text": "c", "y": "news"}],
    )
    data = load_classification(path, text_field="text", label_field="y")
    assert data.label_names == ["arts", "news", "sports"]
    assert data.label_ids == [2, 0, 1]


def test_integer_labels_beyond_binary_sort_numerically(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"sentence": s, "label": n} for s, n in [("a", 10), ("b", 2), ("c", 1)]]
    )
    data = load_classification(path)
    assert data.label_names == ["1", "2", "10"]
    assert data.label_ids == [2, 1, 0]


def test_given_names_accept_indices_and_names(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": "negative"}]
    )
    data = load_classification(path, labels=["negative", "positive"])
    assert data.label_ids == [1, 0]


def test_numeral_names_match_by_name_not_index(tmp_path: Path) -> None:
    # Star ratings: label 1 is the name "1" (id 0), and 0 is not a star rating at all.
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 0}])
    with pytest.raises(InputError) as err:
        load_classification(path, labels=["1", "2", "3"])
    assert err.value.line == 2


def test_label_outside_given_set_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 2}])
    with pytest.raises(InputError) as err:
        load_classification(path, labels=["negative", "positive"])
    assert err.value.line == 2
    assert str(path) in str(err.value)
    assert "'2'" in str(err.value)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"sentence": "a", "label": ', "malformed JSON"),
        ('{"label": 1}', "missing field 'sentence'"),
        ('{"sentence": "x"}', "missing field 'label'"),
        ('{"sentence": "   ", "label": 1}', "empty text"),
        ('{"sentence": "x", "label": 1.5}', "label must be an integer or a string"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_line_raises_with_line_number(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"sentence": "ok", "label": 1}\n\n' + line + "\n")
    with pytest.raises(InputError) as err:
        load_classification(path)
    assert err.value.line == 3
    assert problem in err.value.problem
    assert f"{path}:3:" in str(err.value)


def test_csv_and_tsv_with_line_numbers(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('sentence,label\n"good, really",1\nbad,0\n')
    data = load_classification(csv_path)
    assert data.texts == ["good, really", "bad"]
    assert data.label_ids == [1, 0]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("sentence\tlabel\nfine\t1\n\t0\n")
    with pytest.raises(InputError) as err:
        load_classification(tsv_path)
    assert err.value.line == 3


def test_empty_missing_and_unsupported_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no examples"):
        load_classification(empty)
    with pytest.raises(InputError, match="no such file"):
        load_classification(tmp_path / "missing.jsonl")
    other = tmp_path / "d.parquet"
    other.write_text("x")
    with pytest.raises(InputError, match="unsupported format"):
        load_classification(other)


class _FakeTokenizer:
    cls_id, sep_id = 2, 3

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[10 + len(w) for w in t.split()] for t in texts]


def test_encoding_truncates_and_wraps_with_specials() -> None:
    seqs = encode_for_classification(_FakeTokenizer(), ["a bb ccc dddd", "e"], max_len=4)
    assert seqs == [[2, 11, 12, 3], [2, 11, 3]]


def test_pad_batch_and_length_sorted_batches() -> None:
    ids, mask = pad_batch([[2, 5, 3], [2, 3]], pad_id=0)
    assert torch.equal(ids, torch.tensor([[2, 5, 3], [2, 3, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert length_sorted_batches([5, 1, 3, 2], 2) == [[1, 3], [2, 0]]
