"""Task data from ``hf:<id>[:<config>]:<split>`` references, with ``datasets.load_dataset`` replaced by
local in-memory datasets in the hub's layouts (no internet here)."""

from __future__ import annotations

from typing import Any

import datasets
import pytest

from plm_core.errors import InputError
from plm_core.finetune.conll import read_conll
from plm_core.finetune.hub import data_digest
from plm_core.finetune.squad import read_squad
from plm_core.finetune.task_data import load_classification

NER_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
CONTEXT = "Alice Smith flew from Paris to Berlin on Monday."


def _ner(tags: list[list[int]]) -> datasets.Dataset:
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_NAMES)),
        }
    )
    tokens = [["Alice", "Smith", "flew", "to", "Berlin"], ["no", "names"]]
    return datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags}, features=features)


def _squad(answers: list[dict[str, list[Any]]]) -> datasets.Dataset:
    n = len(answers)
    return datasets.Dataset.from_dict(
        {
            "id": [f"q{i}" for i in range(n)],
            "title": ["Travel"] * n,
            "context": [CONTEXT] * n,
            "question": ["Where did Alice fly to?"] * n,
            "answers": answers,
        }
    )


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, datasets.Dataset]:
    """``load_dataset(name, config, split=...)`` answers from this dict, keyed by "name:split"."""
    table: dict[str, datasets.Dataset] = {}

    def fake_load(name: str, config: str | None = None, split: str | None = None) -> datasets.Dataset:
        key = f"{name}:{split}"
        if key not in table:
            raise FileNotFoundError(f"Dataset {name!r} doesn't exist on the Hub")
        return table[key]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    return table


def test_classification_from_the_hub(hub: dict[str, datasets.Dataset]) -> None:
    hub["glue:train"] = datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]})
    data = load_classification("hf:glue:train")
    assert data.texts == ["good", "bad", "fine"] and data.label_ids == [1, 0, 1]


def test_conll_from_the_hub_maps_class_ids_to_iob2_names(hub: dict[str, datasets.Dataset]) -> None:
    hub["conll2003:test"] = _ner([[1, 2, 0, 0, 3], [0, 0]])
    data = read_conll("hf:conll2003:test")
    assert [s.tags for s in data.sentences] == [["B-PER", "I-PER", "O", "O", "B-LOC"], ["O", "O"]]
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert data.counts["sentences"] == 2 and data.counts["tokens"] == 7


def test_conll_from_the_hub_checks_the_scheme_and_names_the_row(hub: dict[str, datasets.Dataset]) -> None:
    hub["conll2003:bad"] = _ner([[0, 0, 0, 0, 0], [2, 0]])  # I-PER opening a sentence is not IOB2
    with pytest.raises(InputError, match=r"hf:conll2003:bad.*2"):
        read_conll("hf:conll2003:bad", tag_scheme="bio")


def test_squad_from_the_hub_v1_and_v2(hub: dict[str, datasets.Dataset]) -> None:
    berlin = {"text": ["Berlin"], "answer_start": [CONTEXT.index("Berlin")]}
    hub["squad:validation"] = _squad([berlin, berlin])
    v1 = read_squad("hf:squad:validation")
    assert v1.version == "1.1" and len(v1) == 2 and v1.titles == ["Travel"]
    first = v1.examples[0]
    assert first.context[first.answers[0].start :][:6] == "Berlin"
    hub["squad_v2:validation"] = _squad([berlin, {"text": [], "answer_start": []}])
    v2 = read_squad("hf:squad_v2:validation")
    assert v2.version == "2.0" and [e.is_impossible for e in v2.examples] == [False, True]


def test_squad_from_the_hub_with_a_wrong_answer_start_names_the_question(hub) -> None:
    hub["squad:bad"] = _squad([{"text": ["Berlin"], "answer_start": [3]}])
    with pytest.raises(InputError, match=r"hf:squad:bad.*'q0'"):
        read_squad("hf:squad:bad")


def test_unreachable_hub_dataset_is_an_input_error_naming_the_reference(hub) -> None:
    with pytest.raises(InputError, match="hf:nope:train.*cannot load from the HF hub"):
        read_conll("hf:nope:train")


def test_hub_digest_is_the_reference() -> None:
    assert data_digest("hf:squad:validation") == data_digest("hf:squad:validation")
    assert data_digest("hf:squad:validation") != data_digest("hf:squad:train")
