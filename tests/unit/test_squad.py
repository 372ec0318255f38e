"""SQuAD reading, the by-article split, character offsets of pieces, windows and n-best decoding."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plm_core.config import TokenizerConfig
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.squad import (
    DecodeConfig,
    EncodedContext,
    SquadData,
    WindowConfig,
    answer_token_span,
    char_span,
    decode_example,
    encode_contexts,
    eval_titles,
    example_features,
    read_squad,
    select_split,
    window_starts,
)
from plm_core.tokenizer import Tokenizer, train_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SQUAD_V1 = SHARED / "squad_v1" / "dev_minus_xquad.json"
SQUAD_V2 = SHARED / "squad_v2" / "dev_minus_xquad.json"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared SQuAD data not found at {path}")
    return path


@pytest.fixture(scope="module")
def squad_v1() -> SquadData:
    return read_squad(_need(SQUAD_V1))


@pytest.fixture(scope="module")
def squad_v2() -> SquadData:
    return read_squad(_need(SQUAD_V2))


@pytest.fixture(scope="module")
def squad_tokenizer(tmp_path_factory: pytest.TempPathFactory, squad_v1: SquadData) -> Tokenizer:
    """A 1.5k-piece tokenizer trained (with the project's trainer and settings) on a third of the v1
    contexts: the other contexts then also exercise rarer pieces and byte fallback."""
    root = tmp_path_factory.mktemp("squad_tok")
    (root / "clean" / "train").mkdir(parents=True)
    contexts = sorted({ex.context for ex in squad_v1.examples})[::3]
    pq.write_table(pa.table({"text": contexts}), root / "clean" / "train" / "part-00000.parquet")
    (root / "tok").mkdir()
    train_tokenizer(
        root / "clean", TokenizerConfig(vocab_size=1500, sample_sentences=5000, num_sentinels=4), root / "tok"
    )
    return Tokenizer.load(root / "tok")


def _qa(qid: str, question: str, context: str, answer: str | None, nth: int = 0) -> dict[str, Any]:
    if answer is None:
        return {"id": qid, "question": question, "answers": [], "is_impossible": True}
    start = -1
    for _ in range(nth + 1):
        start = context.index(answer, start + 1)
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


def _write(
    path: Path, articles: dict[str, list[tuple[str, list[dict[str, Any]]]]], version: str = "1.1"
) -> Path:
    doc = {
        "version": version,
        "data": [
            {"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras]}
            for t, paras in articles.items()
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


CTX = "The Denver Broncos defeated the Carolina Panthers 24–10 to earn their third Super Bowl title."


def _small(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "small.json",
        {
            "Super_Bowl": [
                (CTX, [_qa("q1", "Who won?", CTX, "Denver Broncos"), _qa("q2", "Score?", CTX, "24–10")])
            ],
            "Other": [("A quiet river.", [_qa("q3", "What river?", "A quiet river.", "quiet river")])],
        },
    )


# ---------------------------------------------------------------- reader


def test_reads_real_files_with_the_documented_counts(squad_v1: SquadData, squad_v2: SquadData) -> None:
    assert squad_v1.version == "1.1"
    assert squad_v1.counts() == {
        "articles": 48,
        "paragraphs": 1827,
        "questions": 9380,
        "answerable": 9380,
        "unanswerable": 0,
    }
    assert sum(len(ex.answers) for ex in squad_v1.examples) == 30762
    assert squad_v2.version == "2.0"
    assert squad_v2.counts() == {
        "articles": 35,
        "paragraphs": 1031,
        "questions": 10174,
        "answerable": 5111,
        "unanswerable": 5063,
    }
    assert all(ex.is_impossible == (not ex.answers) for ex in squad_v2.examples)


def test_reader_small_file(tmp_path: Path) -> None:
    data = read_squad(_small(tmp_path))
    assert [ex.qid for ex in data.examples] == ["q1", "q2", "q3"]
    assert data.titles == ["Super_Bowl", "Other"]
    q2 = data.examples[1]
    assert q2.context[q2.answers[0].start :].startswith("24–10")
    assert data.gold == {"q1": ["Denver Broncos"], "q2": ["24–10"], "q3": ["quiet river"]}


def _error(tmp_path: Path, mutate: Any) -> InputError:
    path = _small(tmp_path)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(InputError) as err:
        read_squad(path)
    return err.value


def test_bad_answer_start_names_file_line_path_and_id(tmp_path: Path) -> None:
    def shift(doc: dict[str, Any]) -> None:
        doc["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1

    err = _error(tmp_path, shift)
    assert err.path == str(tmp_path / "small.json")
    assert "data[0].paragraphs[0].qas[1].answers[0].answer_start" in err.problem
    assert "'q2'" in err.problem and "'24–10'" in err.problem
    lines = (tmp_path / "small.json").read_text().splitlines()
    assert err.line is not None and '"id": "q2"' in lines[err.line - 1]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), "missing field 'question'"),
        (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "missing field 'context'"),
        (lambda d: d["data"][1]["paragraphs"][0]["qas"][0]["answers"][0].pop("text"), "missing field 'text'"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "no answers"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(id="q3"), "duplicate question id"),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(is_impossible=True),
            "is_impossible is true",
        ),
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="7"),
            "expected int",
        ),
        (lambda d: d.pop("data"), "expected a SQuAD object"),
    ],
)
def test_bad_rows_are_errors(tmp_path: Path, mutate: Any, expected: str) -> None:
    err = _error(tmp_path, mutate)
    assert expected in err.problem
    assert str(tmp_path / "small.json") in str(err)


def test_malformed_json_and_version_mismatch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n  {"title": "x",\n')
    with pytest.raises(InputError, match="malformed JSON") as err:
        read_squad(bad)
    assert err.value.line is not None
    v2 = _write(tmp_path / "v2.json", {"A": [(CTX, [_qa("n1", "Who lost?", CTX, None)])]}, version="v2.0")
    assert read_squad(v2).version == "2.0"
    with pytest.raises(InputError, match="unanswerable"):
        read_squad(v2, version="1.1")


# ---------------------------------------------------------------- split


def test_split_by_article_is_deterministic_disjoint_and_order_free(
    squad_v1: SquadData, squad_v2: SquadData
) -> None:
    train = select_split(squad_v1, "train", 0.2, seed=0)
    dev = select_split(squad_v1, "eval", 0.2, seed=0)
    assert set(train.titles).isdisjoint(dev.titles)
    assert set(train.titles) | set(dev.titles) == set(squad_v1.titles)
    assert {ex.title for ex in dev.examples} == set(dev.titles)
    assert len(train) + len(dev) == len(squad_v1)
    # The documented split (docs/contracts.md): 10 of 48 v1.1 articles, 2024 questions held out.
    assert (len(dev.titles), len(dev)) == (10, 2024)
    again = select_split(squad_v1, "eval", 0.2, seed=0)
    assert [ex.qid for ex in again.examples] == [ex.qid for ex in dev.examples]
    shuffled = list(squad_v1.titles)
    random.Random(1).shuffle(shuffled)
    assert eval_titles(shuffled, 0.2, 0) == set(dev.titles)
    assert eval_titles(squad_v1.titles, 0.2, 1) != set(dev.titles)
    # A title falls on the same side in every file: v2's held-out articles are v1's that v2 has.
    v2_dev = eval_titles(squad_v2.titles, 0.2, 0)
    assert v2_dev == set(dev.titles) & set(squad_v2.titles)
    assert select_split(squad_v1, "all", 0.2, 0) is squad_v1


def test_split_errors() -> None:
    with pytest.raises(ConfigError, match="eval_fraction"):
        eval_titles(["a", "b"], 1.0, 0)
    with pytest.raises(ConfigError, match="no train article|no eval article"):
        eval_titles(["only"], 0.5, 0)


# ---------------------------------------------------------------- offsets


def test_offsets_on_real_squad(squad_v1: SquadData, squad_v2: SquadData, squad_tokenizer: Tokenizer) -> None:
    """Every answer maps to pieces whose character span covers it, and mostly equals it; pieces'
    spans are what SentencePiece saw after NFKC (ids identical to ``Tokenizer.encode``)."""
    for data in (squad_v1, squad_v2):
        contexts = sorted({ex.context for ex in data.examples})
        encoded = dict(zip(contexts, encode_contexts(squad_tokenizer, contexts), strict=True))
        assert [encoded[c].ids for c in contexts[:200]] == squad_tokenizer.encode(contexts[:200])
        answers = exact = 0
        for ex in data.examples:
            ctx = encoded[ex.context]
            for a in ex.answers:
                answers += 1
                span = answer_token_span(ctx, a.start, a.start + len(a.text))
                assert span is not None
                s, e = char_span(ctx, *span)
                assert s <= a.start and a.start + len(a.text) <= e, (a.text, ex.context[s:e])
                exact += ex.context[s:e] == a.text
        # The rest start or end inside a piece ("8" of "18", "2001" of "2001."): granularity, not
        # offsets. Measured with the pipeline's 8k tokenizer: 205 / 30,762 (v1.1), 112 / 17,536 (v2.0).
        assert exact / answers > 0.97, (data.version, exact, answers)
        pieces = surface_ok = 0
        for c in contexts[::3]:  # a third of the contexts keeps this check to a few seconds
            ctx = encoded[c]
            for i, token in enumerate(ctx.ids):
                piece = squad_tokenizer.id_to_piece(token)
                if piece.startswith("<0x"):
                    continue
                pieces += 1
                surface_ok += unicodedata.normalize("NFKC", c[ctx.starts[i] : ctx.ends[i]]) == piece.replace(
                    "▁", ""
                )
        # Misses are zero-width characters (U+200B, U+FEFF) kept inside a span and NFKC expansions
        # (½ -> 1⁄2 split over pieces): 29 of 405k v1.1 pieces with the 8k tokenizer.
        assert pieces - surface_ok < 0.001 * pieces


def test_offsets_survive_nfkc_and_whitespace(squad_tokenizer: Tokenizer) -> None:
    context = "Ａｂｃ  ﬁne café\u00a0bar, ½ cup;\tend  (NFL) 🙂"
    ctx = encode_contexts(squad_tokenizer, [context])[0]
    pieces = [squad_tokenizer.id_to_piece(i) for i in ctx.ids]
    assert pieces.count("<0xF0>") == 1  # the emoji is four byte-fallback pieces ...
    for i, piece in enumerate(pieces):  # ... which, like every piece but a lone "▁", span characters
        assert ctx.starts[i] < ctx.ends[i] or piece == "▁", (piece, ctx.starts[i], ctx.ends[i])
    for word in ("Ａｂｃ", "ﬁne", "café", "bar", "½", "cup", "end", "NFL", "🙂"):
        start = context.index(word)
        span = answer_token_span(ctx, start, start + len(word))
        assert span is not None
        s, e = char_span(ctx, *span)
        assert s <= start and start + len(word) <= e
        assert context[s:e].strip("(),;") == word  # only punctuation fused into a piece can widen it
    assert not any(context[s:e] != context[s:e].lstrip() for s, e in zip(ctx.starts, ctx.ends, strict=True))


# ---------------------------------------------------------------- windows


def test_window_starts() -> None:
    assert window_starts(10, 20, 5) == [0]
    assert window_starts(25, 10, 5) == [0, 5, 10, 15]  # the last one reaches token 25
    assert window_starts(25, 10, 20) == [0, 10, 20]  # a stride over the budget never skips tokens


def test_windows_label_the_answer_exactly_where_it_fits(
    squad_v1: SquadData, squad_tokenizer: Tokenizer
) -> None:
    examples = [ex for ex in squad_v1.examples if len(ex.context) > 900][:40]
    window = WindowConfig(max_len=64, doc_stride=16, max_query_len=16)
    feats = example_features(squad_tokenizer, examples, window)
    assert len(feats) > 3 * len(examples)  # long contexts, many windows each
    for f in range(len(feats)):
        ex = examples[feats.example_index[f]]
        ctx = feats.contexts[feats.example_index[f]]
        assert len(feats.input_ids[f]) <= window.max_len
        off, ds, n = feats.context_offset[f], feats.doc_start[f], feats.doc_len[f]
        assert feats.input_ids[f][off : off + n] == ctx.ids[ds : ds + n]
        assert (
            feats.input_ids[f][0] == squad_tokenizer.cls_id
            and feats.input_ids[f][-1] == squad_tokenizer.sep_id
        )
        assert feats.token_type_ids[f][off] == 1 and feats.token_type_ids[f][off - 1] == 0
        a = ex.answers[0]
        first, last = answer_token_span(ctx, a.start, a.start + len(a.text))
        inside = ds <= first and last < ds + n
        if inside:
            assert (feats.start_positions[f], feats.end_positions[f]) == (first - ds + off, last - ds + off)
            s, e = char_span(ctx, feats.start_positions[f] - off + ds, feats.end_positions[f] - off + ds)
            assert a.text in ex.context[s:e]
        else:
            assert (feats.start_positions[f], feats.end_positions[f]) == (0, 0)
    # every question has at least one window holding its answer (answers are short here)
    labelled = {feats.example_index[f] for f in range(len(feats)) if feats.start_positions[f] > 0}
    assert labelled == set(range(len(examples)))


def test_unanswerable_windows_point_at_cls(squad_v2: SquadData, squad_tokenizer: Tokenizer) -> None:
    impossible = [ex for ex in squad_v2.examples if ex.is_impossible][:20]
    feats = example_features(
        squad_tokenizer, impossible, WindowConfig(max_len=96, doc_stride=32, max_query_len=24)
    )
    assert set(feats.start_positions) == {0} and set(feats.end_positions) == {0}


def test_short_max_len_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_len"):
        WindowConfig(max_len=64, doc_stride=32, max_query_len=64)


# ---------------------------------------------------------------- n-best decoding

# "Denver Broncos beat Carolina Panthers", one piece per word; windows are
# [CLS] q q [SEP] <5 context tokens> [SEP], so context token k sits at position 4 + k.
WORDS_CTX = "Denver Broncos beat Carolina Panthers"
WORDS = EncodedContext(
    ids=[10, 11, 12, 13, 14],
    starts=np.array([0, 7, 15, 20, 29]),
    ends=np.array([6, 14, 19, 28, 37]),
)


def _logits(
    start: dict[int, float], end: dict[int, float], length: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.zeros(length, dtype=np.float32), np.zeros(length, dtype=np.float32)
    for k, v in start.items():
        s[k] = v
    for k, v in end.items():
        e[k] = v
    return s, e


def test_nbest_picks_best_valid_span() -> None:
    # start best on "Carolina" (7), end best on "Panthers" (8); position 1 (question) is ignored
    s, e = _logits({1: 50.0, 7: 5.0, 5: 4.0}, {1: 50.0, 8: 6.0, 5: 1.0})
    p = decode_example(WORDS_CTX, WORDS, [(s, e, 4, 0, 5)], DecodeConfig(max_answer_length=30, n_best=5))
    assert (p.text, p.start) == ("Carolina Panthers", 20)
    assert p.nbest[0][2] == pytest.approx(11.0)
    assert 0 < p.score <= 1
    # end before start is never a span: start 8 + end 5 would score 18; "Panthers" (8, 8) has 11
    s, e = _logits({8: 9.0, 4: 1.0}, {5: 9.0, 8: 2.0})
    p = decode_example(WORDS_CTX, WORDS, [(s, e, 4, 0, 5)], DecodeConfig(n_best=5))
    assert (p.text, p.nbest[0][2]) == ("Panthers", 11.0)
    # max_answer_length in tokens: the whole context (5 tokens, 18) is best but too long for 3;
    # then "beat Carolina Panthers" (6..8: 1 + 9) beats "Denver Broncos beat" (4..6: 9 + 0)
    s, e = _logits({4: 9.0, 6: 1.0}, {8: 9.0, 7: 1.0})
    assert decode_example(WORDS_CTX, WORDS, [(s, e, 4, 0, 5)], DecodeConfig(n_best=5)).text == WORDS_CTX
    p = decode_example(WORDS_CTX, WORDS, [(s, e, 4, 0, 5)], DecodeConfig(max_answer_length=3, n_best=5))
    assert (p.text, p.start) == ("beat Carolina Panthers", 15)


def test_nbest_merges_overlapping_windows() -> None:
    # window A holds context tokens 0-2 at positions 4-6, window B tokens 2-4 at positions 4-6
    a = _logits({4: 3.0, 6: 1.0}, {5: 3.0, 6: 1.0}, length=8)  # best "Denver Broncos" 6.0; null 0
    b = _logits({0: -5.0, 4: 2.0, 6: 8.0}, {0: -5.0, 6: 8.0}, length=8)  # "Panthers" 16.0; null -10
    p = decode_example(
        WORDS_CTX, WORDS, [(*a, 4, 0, 3), (*b, 4, 2, 3)], DecodeConfig(n_best=4, allow_null=True)
    )
    assert (p.text, p.start) == ("Panthers", 29)
    assert p.null_score_diff == pytest.approx(-10.0 - 16.0)  # the smallest null over windows
    texts = [t for t, _, _ in p.nbest]
    assert len(texts) == len(set(texts))  # "beat" is in both windows, listed once


def test_null_threshold_v2() -> None:
    s, e = _logits({0: 4.0, 6: 1.0}, {0: 4.0, 6: 1.0})  # null 8, best span "beat" 2: diff 6
    windows = [(s, e, 4, 0, 5)]
    p = decode_example(WORDS_CTX, WORDS, windows, DecodeConfig(allow_null=True, null_threshold=0.0))
    assert (p.text, p.start, p.best_text) == ("", -1, "beat")
    assert p.null_score_diff == pytest.approx(6.0)
    assert p.score > 0.5  # the null answer carries most of the probability
    p = decode_example(WORDS_CTX, WORDS, windows, DecodeConfig(allow_null=True, null_threshold=6.5))
    assert (p.text, p.start) == ("beat", 15)
    # a v1.1 model never answers "no answer"
    assert decode_example(WORDS_CTX, WORDS, windows, DecodeConfig(allow_null=False)).text == "beat"
