"""Flow tests run against one temporary Prefect API for the whole session (prefect_test_harness)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small corpus and SST-2 slice built from the shared data.

    The corpus has 40 documents cut from Tiny Shakespeare, one of them wrapped in a Project
    Gutenberg header and footer and one planted byte-identical duplicate, so cleaning has work.
    """
    root = tmp_path_factory.mktemp("tiny_data")
    corpus = root / "corpus"
    corpus.mkdir()
    text = (shared_data / "corpus" / "tiny_shakespeare.txt").read_text()
    size = len(text) // 40
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(text[i * size : (i + 1) * size])
    header = "The Project Gutenberg EBook of Test\n\n*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***\n"
    footer = "\n*** END OF THIS PROJECT GUTENBERG EBOOK TEST ***\nLicence text that must go.\n"
    (corpus / "doc00.txt").write_text(header + text[:size] + footer)
    (corpus / "dup_of_doc05.txt").write_text((corpus / "doc05.txt").read_text())
    sst = root / "sst2"
    sst.mkdir()
    for split, n in (("train", 3000), ("dev", 200)):
        lines = (shared_data / "glue_sst2" / f"{split}.jsonl").read_text().splitlines()[:n]
        (sst / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        assert all(json.loads(x)["sentence"] for x in lines)
    return {
        "corpus": corpus,
        "train": sst / "train.jsonl",
        "dev": sst / "dev.jsonl",
        **_task_slices(shared_data, root),
    }


def _task_slices(shared_data: Path, root: Path) -> dict[str, Path]:
    """Slices of CoNLL-2003 (whole sentences) and SQuAD v1.1 (8 articles, 2 paragraphs each)."""
    out: dict[str, Path] = {}
    for split, n in (("train", 300), ("valid", 80), ("test", 80)):
        blocks = (shared_data / "conll2003" / f"{split}.conll").read_text().split("\n\n")
        out[f"conll_{split}"] = root / f"{split}.conll"
        out[f"conll_{split}"].write_text("\n\n".join(blocks[:n]) + "\n")
    squad = json.loads((shared_data / "squad_v1" / "dev_minus_xquad.json").read_text())
    articles = [{**a, "paragraphs": a["paragraphs"][:2]} for a in squad["data"][:8]]
    out["squad"] = root / "squad.json"
    out["squad"].write_text(json.dumps({"version": squad["version"], "data": articles}))
    return out
