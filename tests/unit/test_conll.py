"""CoNLL reader: column layouts, -DOCSTART- and sentence breaks, IOB1/BIOES/BILOU conversion to
IOB2, the label set, and bad lines reported by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from plm_core.errors import ConfigError, InputError
from plm_core.finetune.conll import labels_for_types, read_conll

CONLL2003 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "conll2003"

# Lines 1-12: the layout of the real files (token POS chunk NER, single spaces).
CONLL_2003_SAMPLE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def _write(tmp_path: Path, text: str, name: str = "data.conll") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll2003_layout_docstart_and_sentence_breaks(tmp_path: Path) -> None:
    data = read_conll(_write(tmp_path, CONLL_2003_SAMPLE))
    # A -DOCSTART- line directly after a sentence (no blank line) still ends that sentence.
    assert [s.words for s in data.sentences] == [
        ["EU", "rejects", "German", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS"],
    ]
    assert [s.tags for s in data.sentences] == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [s.line for s in data.sentences] == [3, 8, 12]
    assert data.counts == {"documents": 2, "sentences": 3, "tokens": 7}
    assert data.scheme == "iob2"
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_other_column_layouts(tmp_path: Path) -> None:
    two_columns = _write(tmp_path, "Paris\tB-LOC\nis\tO\n\nNew York\tB-LOC\n", "two.tsv")
    # Tab-separated: a token may contain a space.
    data = read_conll(two_columns, separator="\t")
    assert [s.words for s in data.sentences] == [["Paris", "is"], ["New York"]]
    assert data.labels == ["O", "B-LOC", "I-LOC"]
    # Tag in the middle, token last; negative indices count from the end.
    middle = _write(tmp_path, "1 B-PER Ann x\n2 I-PER Lee x\n3 O runs x\n", "middle.txt")
    data = read_conll(middle, token_column=-2, tag_column=1)
    assert data.sentences[0].words == ["Ann", "Lee", "runs"]
    assert data.sentences[0].tags == ["B-PER", "I-PER", "O"]
    with pytest.raises(ConfigError, match="one column"):
        read_conll(middle, token_column=1, tag_column=-3)


def test_iob1_is_detected_and_converted(tmp_path: Path) -> None:
    # IOB1 (the 2003 release): I- starts an entity; B- only splits two adjacent same-type entities.
    path = _write(tmp_path, "a I-PER\nb I-PER\nc B-PER\nd O\ne I-LOC\nf I-ORG\n")
    expected = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]
    for scheme in ("auto", "iob1"):
        data = read_conll(path, tag_scheme=scheme)
        assert data.scheme == "iob1"
        assert data.sentences[0].tags == expected
    with pytest.raises(
        InputError, match=r"data\.conll:1: tag 'I-PER' at the start of a sentence is not valid IOB2"
    ):
        read_conll(path, tag_scheme="bio")


def test_bioes_and_bilou_are_converted(tmp_path: Path) -> None:
    bioes = _write(tmp_path, "a S-PER\nb O\nc B-ORG\nd I-ORG\ne E-ORG\nf B-LOC\ng E-LOC\nh S-LOC\n", "e.txt")
    expected = ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "I-LOC", "B-LOC"]
    for scheme in ("auto", "bioes", "iobes"):
        data = read_conll(bioes, tag_scheme=scheme)
        assert data.scheme == "bioes"
        assert data.sentences[0].tags == expected
    bilou = _write(tmp_path, "a U-PER\nb O\nc B-ORG\nd I-ORG\ne L-ORG\n", "u.txt")
    assert read_conll(bilou, tag_scheme="bilou").sentences[0].tags == [
        "B-PER",
        "O",
        "B-ORG",
        "I-ORG",
        "I-ORG",
    ]


@pytest.mark.parametrize(
    ("text", "kwargs", "line", "problem"),
    [
        ("a NN O\nb NN\n", {}, 2, "2 columns, expected 3"),
        ("a NN O\n\nb NN O extra\n", {}, 3, "4 columns, expected 3"),
        ("a X-PER\n", {}, 1, "malformed tag 'X-PER'"),
        ("a O\nb B-\n", {}, 2, "malformed tag 'B-'"),
        ("a BPER\n", {}, 1, "malformed tag 'BPER'"),
        ("a B-PER\nb O\nc I-PER\n", {"tag_scheme": "bio"}, 3, "'I-PER' after 'O' is not valid IOB2"),
        ("a B-PER\nb I-LOC\n", {"tag_scheme": "bio"}, 2, "'I-LOC' after 'B-PER' is not valid IOB2"),
        (
            "a B-PER\nb O\n",
            {"tag_scheme": "bioes"},
            1,
            "'B-PER' at the start of a sentence is not valid BIOES",
        ),
        (
            "a B-PER\nb I-PER\n",
            {"labels": ["O", "B-PER"]},
            2,
            "'I-PER' (I-PER in IOB2) is not in the label set",
        ),
        (
            "a B-LOC\n",
            {"labels": ["O", "B-PER", "I-PER"]},
            1,
            "'B-LOC' (B-LOC in IOB2) is not in the label set",
        ),
    ],
)
def test_bad_lines_name_file_and_line(
    tmp_path: Path, text: str, kwargs: dict, line: int, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        read_conll(path, **kwargs)
    assert err.value.path == str(path)
    assert err.value.line == line
    assert problem in err.value.problem


def test_given_labels_are_kept_and_files_without_sentences_fail(tmp_path: Path) -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    data = read_conll(_write(tmp_path, "a B-PER\nb O\n"), labels=labels)
    assert data.labels == labels
    with pytest.raises(InputError, match="no sentences"):
        read_conll(_write(tmp_path, "-DOCSTART- -X- -X- O\n\n\n", "empty.conll"))
    with pytest.raises(InputError, match="no such file"):
        read_conll(tmp_path / "missing.conll")
    (tmp_path / "latin1.conll").write_bytes("caf\xe9 O\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_conll(tmp_path / "latin1.conll")
    with pytest.raises(ConfigError, match="tag_scheme"):
        read_conll(tmp_path / "data.conll", tag_scheme="iob3")


def test_labels_for_types() -> None:
    assert labels_for_types(["PER", "LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_real_conll2003_test_split_counts() -> None:
    path = CONLL2003 / "test.conll"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = read_conll(path)
    # Figures from shared/data/SOURCES.md: 3,453 sentences, 46,435 tokens, 231 documents, IOB2.
    assert data.counts == {"documents": 231, "sentences": 3453, "tokens": 46435}
    assert data.scheme == "iob2"
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
