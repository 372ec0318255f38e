"""Reading classification files: label rules and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plm_core.errors import InputError
from plm_core.finetune.task_data import (
    encode_for_classification,
    encode_inputs,
    encode_pairs,
    length_sorted_batches,
    load_classification,
    model_inputs,
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


def test_sentence_pairs_from_jsonl_csv_and_tsv(tmp_path: Path) -> None:
    jsonl = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"premise": "a cat sat", "hypothesis": "an animal sat", "label": "entailment"},
            {"premise": "a dog ran", "hypothesis": "nothing moved", "label": "contradiction"},
        ],
    )
    data = load_classification(jsonl, text_field="premise", label_field="label", text_pair_field="hypothesis")
    assert data.texts == ["a cat sat", "a dog ran"]
    assert data.text_pairs == ["an animal sat", "nothing moved"]
    assert data.label_names == ["contradiction", "entailment"] and data.label_ids == [1, 0]
    assert data.subset([1]).text_pairs == ["nothing moved"]

    tsv = tmp_path / "p.tsv"
    tsv.write_text("s1\ts2\tlabel\nhello there\tgeneral, kenobi\t1\nx\ty\t0\n")
    data = load_classification(tsv, text_field="s1", text_pair_field="s2")
    assert data.text_pairs == ["general, kenobi", "y"] and data.label_ids == [1, 0]
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('s1,s2,label\n"a, b",c,1\nd,,0\n')
    with pytest.raises(InputError) as err:
        load_classification(csv_path, text_field="s1", text_pair_field="s2")
    assert err.value.line == 3 and "'s2'" in err.value.problem
    # Single-sentence reading leaves the pair column alone.
    assert load_classification(tsv, text_field="s1").text_pairs is None


def test_missing_pair_field_names_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"a": "x", "b": "y", "label": 0}, {"a": "x", "label": 1}])
    with pytest.raises(InputError) as err:
        load_classification(path, text_field="a", text_pair_field="b")
    assert err.value.line == 2 and "missing field 'b'" in err.value.problem


def test_bad_label_in_tsv_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\nfine\tpositive\nmeh\tneutral\n")
    with pytest.raises(InputError) as err:
        load_classification(path, labels=["negative", "positive"])
    assert err.value.line == 3 and f"{path}:3:" in str(err.value) and "'neutral'" in str(err.value)


def test_hub_reference_must_name_a_split() -> None:
    with pytest.raises(InputError, match="hf:<dataset id>"):
        load_classification("hf:glue")


def test_pair_encoding_segments_and_longest_first_truncation() -> None:
    tok = _FakeTokenizer()
    seqs, segs = encode_pairs(tok, ["a bb", "a bb ccc dddd eeeee"], ["ccc", "f"], max_len=8)
    # [CLS] a bb [SEP] ccc [SEP]: segment 0 up to and including the first [SEP], 1 after.
    assert seqs[0] == [2, 11, 12, 3, 13, 3]
    assert segs[0] == [0, 0, 0, 0, 1, 1]
    # Too long: the longer side (the first) loses tokens until both fit in 8 - 3 = 5.
    assert seqs[1] == [2, 11, 12, 13, 14, 3, 11, 3]
    assert segs[1] == [0] * 6 + [1] * 2
    seqs, segs = encode_pairs(tok, ["a a a a a a"], ["b b b b b b"], max_len=8)
    assert seqs[0] == [2, 11, 11, 11, 3, 11, 11, 3]  # equal sides: the second loses first, 3 + 2
    assert encode_inputs(tok, ["a"], 8) == ([[2, 11, 3]], None)

    inputs = model_inputs(seqs + [[2, 11, 3]], pad_id=0, segments=segs + [[0, 0, 0]])
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert inputs["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0] * 8]
    assert inputs["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert "token_type_ids" not in model_inputs([[2, 3]], pad_id=0)


def test_label_names_negative_positive_are_read_as_names(tmp_path: Path) -> None:
    """String labels that happen to be SST-2's names are names, not the 0/1 id convention."""
    path = tmp_path / "named.jsonl"
    rows = [("great", "positive"), ("awful", "negative"), ("fine", "positive")]
    path.write_text("".join(json.dumps({"sentence": t, "label": lab}) + "\n" for t, lab in rows))
    data = load_classification(path)
    assert data.label_names == ["negative", "positive"]
    assert data.label_ids == [1, 0, 1]
