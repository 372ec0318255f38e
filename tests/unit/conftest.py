"""Fixtures for the data-stage tests: synthetic corpora and one small pipeline run shared by the
tokenizer and pack tests (training even a tiny SentencePiece model once per session keeps the
suite fast)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from plm_core.config import CleanConfig, IngestConfig, TokenizerConfig
from plm_core.data.clean import clean
from plm_core.data.ingest import ingest
from plm_core.tokenizer import train_tokenizer

_DATA_VOCABULARY = (
    "the a of and to in is was he she it that for on with as his her at by from they we you this "
    "be had not are but which one all were when there an their what so up out if about who would "
    "make like time just him know take people into year your good some could them see other than "
    "then now look only come its over think also back after use two how our work first well way "
    "even new want because any these give day most us river garden window letter morning silver "
    "captain village winter forest candle harbour journey quiet bright ancient narrow gentle"
)

_DATA_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _make_data_text(seed: int, paragraphs: int = 3, sentences: int = 4) -> str:
    """Deterministic pseudo-English: paragraphs of capitalised sentences, blank-line separated."""
    rng = random.Random(seed)
    vocabulary = _DATA_VOCABULARY.split()
    paras = []
    for _ in range(paragraphs):
        sents = []
        for _ in range(sentences):
            words = rng.choices(vocabulary, k=rng.randint(5, 14))
            sents.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


@pytest.fixture
def data_text() -> Callable[..., str]:
    return _make_data_text


@pytest.fixture
def data_shared_dir() -> Path:
    """The shared read-only data folder next to the repository, or a skip where it is absent."""
    if not (_DATA_SHARED / "corpus" / "gutenberg").is_dir():
        pytest.skip(f"shared data not found at {_DATA_SHARED}")
    return _DATA_SHARED


@dataclass(frozen=True)
class DataRun:
    """A tiny ingest -> clean -> tokenizer run: the texts written and the stage directories."""

    texts: dict[str, str]
    ingest_dir: Path
    clean_dir: Path
    tokenizer_dir: Path
    tokenizer_cfg: TokenizerConfig


_DATA_TOKENIZER = TokenizerConfig(vocab_size=420, sample_sentences=2000, num_sentinels=4, seed=0)


@pytest.fixture(scope="session")
def data_run(tmp_path_factory: pytest.TempPathFactory) -> DataRun:
    root = tmp_path_factory.mktemp("data_run")
    corpus = root / "corpus"
    corpus.mkdir()
    texts = {f"doc{i:02d}": _make_data_text(i, paragraphs=2 + i % 5) for i in range(40)}
    for name, text in texts.items():
        (corpus / f"{name}.txt").write_text(text)
    dirs = {name: root / name for name in ("ingest", "clean", "tokenizer")}
    for d in dirs.values():
        d.mkdir()
    ingest(IngestConfig(paths=[str(corpus)]), dirs["ingest"])
    # Small shards so pack sees several files and row groups to share among workers.
    clean_cfg = CleanConfig(min_chars=20, validation_fraction=0.2, target_shard_bytes=3000)
    clean(dirs["ingest"], clean_cfg, dirs["clean"])
    train_tokenizer(dirs["clean"], _DATA_TOKENIZER, dirs["tokenizer"])
    return DataRun(texts, dirs["ingest"], dirs["clean"], dirs["tokenizer"], _DATA_TOKENIZER)
