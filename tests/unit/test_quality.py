"""Line-level and Gopher document quality rules: each rule fires on the junk it targets, each
threshold is a parameter, and the vectorised counting equals a plain Python reference."""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from plm_core.config import CleanConfig
from plm_core.data.quality import (
    RULES,
    _duplicate_ngram_chars,
    _top_ngram_chars,
    filter_lines,
    quality_reasons,
)

CFG = CleanConfig()


def _book(data_text: Callable[..., str], seed: int) -> str:
    """Hard-wrapped prose, like a Gutenberg book after cleaning."""
    paragraphs = data_text(seed, paragraphs=5).split("\n\n")
    return "\n\n".join(textwrap.fill(p, 70) for p in paragraphs)


def _reasons(texts: list[str], **overrides: object) -> list[str | None]:
    return quality_reasons(pa.array(texts), replace(CFG, **overrides))


def test_clean_prose_passes_every_rule(data_text: Callable[..., str]) -> None:
    assert _reasons([_book(data_text, s) for s in range(20)]) == [None] * 20


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        ("Only a few words here, with the end.", "too_few_words"),
        ("a i o u e " * 30 + "the of and with", "mean_word_length"),
        ("#tag #news #the #of and with " * 12, "symbol_ratio"),
        (
            "\n".join(f"• remember buying vegetables {i} for the dinner with friends" for i in range(30)),
            "bullet_lines",
        ),
        ("\n".join(f"and then the story of line {i} went on with..." for i in range(30)), "ellipsis_lines"),
        (
            " ".join(f"{i * 7919 + 1009} {i * 104729 + 7} {i * 13 + 1000} the" for i in range(40)),
            "alpha_words",
        ),
        ("river garden window letter morning silver captain village " * 10, "stop_words"),
        (
            "\n".join(
                ["the same line of text with words in it"] * 14
                + [f"unique {i} of the rest" for i in range(8)]
            ),
            "duplicate_lines",
        ),
    ],
)
def test_each_rule_catches_its_junk(junk: str, reason: str, data_text: Callable[..., str]) -> None:
    assert _reasons([junk, _book(data_text, 1)]) == [reason, None]


def test_repeated_paragraphs_and_ngrams(data_text: Callable[..., str]) -> None:
    para = data_text(3, paragraphs=1)
    fresh = [data_text(100 + i, paragraphs=1) for i in range(4)]
    repeated_paragraphs = "\n\n".join([para, *fresh[:2], para, para, *fresh[2:]])
    sentence = "the captain walked to the harbour with a lantern and a letter"
    looping = " ".join([sentence] * 3 + [data_text(7, paragraphs=2)])
    reasons = _reasons([repeated_paragraphs, looping])
    assert reasons[0] is not None and reasons[0].startswith("duplicate_")
    assert reasons[1] is not None and reasons[1].startswith(("top_", "duplicate_"))


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"min_words": 100_000}, "too_few_words"),
        ({"max_words": 20}, "too_many_words"),
        ({"min_mean_word_length": 9.0}, "mean_word_length"),
        ({"min_alpha_word_fraction": 1.01}, "alpha_words"),
        ({"min_stop_words": 10_000}, "stop_words"),
        ({"max_top_ngram_char_fraction": [0.0, 0.18, 0.16]}, "top_2gram"),
        ({"max_top_ngram_char_fraction": [1.0, 1.0, 0.0]}, "top_4gram"),
    ],
)
def test_every_threshold_is_a_parameter(override: dict, reason: str, data_text: Callable[..., str]) -> None:
    book = (
        _book(data_text, 2) + " the captain walked home and the captain walked home now."
    )  # a repeated 4-gram
    assert _reasons([book]) == [None]
    assert _reasons([book], **override) == [reason]


def test_quality_can_report_any_rule_name() -> None:
    assert len(set(RULES)) == len(RULES) == 21


def test_filter_lines_drops_symbol_lines_and_counts_them() -> None:
    texts = pa.array(
        [
            "Chapter one\n\n* * * * *\n\nThe story begins.\n-----\nIt ends — well.",
            "No symbols at all here.\nSecond line.",
        ]
    )
    out, seen, dropped = filter_lines(texts, max_symbol_fraction=0.5)
    assert out.to_pylist() == ["Chapter one\n\n\nThe story begins.\nIt ends — well.", texts[1].as_py()]
    assert (seen, dropped) == (9, 2)
    same, _, none = filter_lines(texts, max_symbol_fraction=1.0)
    assert none == 0 and same.to_pylist() == texts.to_pylist()


def _reference_duplicate_chars(words: list[str], n: int) -> int:
    covered = [False] * len(words)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            covered[i : i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c)


def _reference_top_chars(words: list[str], n: int) -> int:
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max((c * sum(map(len, g)) for g, c in grams.items() if c > 1), default=0)


def test_vectorised_repetition_matches_python_reference() -> None:
    rng = random.Random(0)
    vocab = ["a", "bb", "ccc", "dddd", "the", "of", "and"]
    docs = [[rng.choice(vocab) for _ in range(rng.randint(0, 60))] for _ in range(30)]
    vocab_ids = {w: i for i, w in enumerate(vocab)}
    ids = np.array([vocab_ids[w] for d in docs for w in d], dtype=np.int64)
    lengths = np.array([len(w) for d in docs for w in d], dtype=np.int64)
    doc = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    for n in (2, 3, 5, 7):
        dup = _duplicate_ngram_chars(ids, lengths, doc, n, len(docs))
        top = _top_ngram_chars(ids, lengths, doc, n, len(docs))
        assert dup.tolist() == [_reference_duplicate_chars(d, n) for d in docs], n
        assert top.tolist() == [_reference_top_chars(d, n) for d in docs], n


def test_five_gram_shortcut_agrees_with_computing_every_n(data_text: Callable[..., str]) -> None:
    rng = random.Random(1)
    texts = []
    for seed in range(12):
        words = data_text(seed, paragraphs=3).split()
        start = rng.randrange(len(words) - 12)
        texts.append(" ".join(words + words[start : start + rng.randint(5, 12)] * rng.randint(1, 6)))
    tight = [0.15, 0.04, 0.03, 0.02, 0.01, 0.005]
    got = _reasons(texts, max_duplicate_ngram_char_fraction=tight, max_top_ngram_char_fraction=[1, 1, 1])
    words = [t.lower().split() for t in texts]
    expected = []
    for ws in words:
        total = sum(map(len, ws))
        fails = [
            n
            for n, limit in zip(range(5, 11), tight, strict=True)
            if _reference_duplicate_chars(ws, n) / total > limit
        ]
        expected.append(f"duplicate_{fails[0]}gram" if fails else None)
    assert got == expected
    assert any(r not in (None, "duplicate_5gram") for r in got)
