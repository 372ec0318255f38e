"""SQuAD v1.1 / v2.0 data for extractive QA: the JSON reader, the by-article split, context windows
with character offsets, and n-best span decoding.

Reading is strict: a question whose ``answer_start`` does not point at its answer text, a missing
field or a duplicate id stops with an ``InputError`` naming the file, the line of the question
(SQuAD files are often one line; the line is still exact), its JSON path and id. Nothing is trained
or scored on a row that was silently dropped.

Split: one file is cut into train and eval by *article* (title), never by question, because the
questions of one paragraph share their context and often their answers; a question-level split
would score the model on contexts it was trained on. An article is held out when
``sha256(f"{seed}\\0{title}")``, read as a fraction of 2**256, is below ``eval_fraction`` (the rule
clean uses for documents): deterministic, independent of the order of the file, disjoint by
construction, and the same title falls on the same side in every file, so the v1.1 and v2.0
files (which share most articles) are split alike.

Offsets: SentencePiece (``nmt_nfkc``) normalises text before cutting it (NFKC, whitespace runs
collapsed), so piece strings are not substrings of the context. ``encode(..., out_type=
"offset_mapping")`` gives each piece its character span in the *original* text; we then
(1) move each span's start past the whitespace the ``▁`` marker stands for, and (2) give pieces
left without characters (the leading byte-fallback pieces of one character, the ``▁f`` of
``ﬁ`` -> ``fi``) the span of the next piece, which holds their character.
An answer span decoded from tokens is always a slice of the original context, so NFKC never
leaks into an answer (``ﬁ`` stays ``ﬁ``). The only loss is granularity: an answer that starts or
ends inside a piece ("Broncos" inside "▁Broncos'") cannot be reproduced exactly
(``answer_token_span`` widens it to whole pieces); tests count how often that happens on real data.

Windows (BERT's ``doc_stride``): ``[CLS] question [SEP] context[k*stride : k*stride+L] [SEP]``
with segment ids 0/1; consecutive windows start ``doc_stride`` context tokens apart, so with
``doc_stride < L`` they overlap. A training window whose context holds the whole answer is
labelled with its token positions; every other window (and every window of an unanswerable v2
question) is labelled ``(0, 0)``, the ``[CLS]`` position that stands for "no answer here".
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from plm_core.errors import ConfigError, InputError
from plm_core.finetune.hub import is_hub_ref, load_hub_split

SQUAD_VERSIONS = ("auto", "1.1", "2.0")
SPLITS = ("train", "eval", "all")
CLS_POSITION = 0


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset into the context


@dataclass(frozen=True)
class SquadExample:
    """One question over one context. ``answers`` is empty exactly when ``is_impossible`` (v2)."""

    qid: str
    title: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    is_impossible: bool = False

    @property
    def answer_texts(self) -> list[str]:
        return [a.text for a in self.answers]


@dataclass
class SquadData:
    """The questions of one file (or one split of it), in file order."""

    path: str
    version: str  # "1.1" or "2.0"
    examples: list[SquadExample]
    titles: list[str]  # articles in file order (only those with questions here)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def gold(self) -> dict[str, list[str]]:
        """Question id -> gold answer texts (empty for unanswerable), what the metrics take."""
        return {ex.qid: ex.answer_texts for ex in self.examples}

    def counts(self) -> dict[str, int]:
        impossible = sum(ex.is_impossible for ex in self.examples)
        return {
            "articles": len(self.titles),
            "paragraphs": len({(ex.title, ex.context) for ex in self.examples}),
            "questions": len(self.examples),
            "answerable": len(self.examples) - impossible,
            "unanswerable": impossible,
        }


# ---------------------------------------------------------------- reading


class _Locator:
    """Names the place of a bad question: ``path:line`` plus the JSON path and the id."""

    def __init__(self, path: Path, raw: str) -> None:
        self.path, self.raw = path, raw

    def line_of(self, qid: Any) -> int | None:
        """The line holding ``"id": "<qid>"`` (first occurrence), or None when it cannot be found."""
        if not isinstance(qid, str):
            return None
        needle = json.dumps(qid, ensure_ascii=False)
        pos = -1
        for candidate in (needle, json.dumps(qid)):
            pos = self.raw.find(candidate)
            if pos >= 0:
                break
        return self.raw.count("\n", 0, pos) + 1 if pos >= 0 else None

    def error(self, where: str, problem: str, qid: Any = None) -> InputError:
        who = f" (id {qid!r})" if isinstance(qid, str) else ""
        return InputError(self.path, f"{where}{who}: {problem}", line=self.line_of(qid))


def _field(
    obj: Any, key: str, kind: type | tuple[type, ...], loc: _Locator, where: str, qid: Any = None
) -> Any:
    if not isinstance(obj, dict):
        raise loc.error(where, f"expected a JSON object, got {type(obj).__name__}", qid)
    if key not in obj:
        raise loc.error(where, f"missing field {key!r}", qid)
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise loc.error(f"{where}.{key}", f"expected {names}, got {type(value).__name__}", qid)
    return value


def _file_version(doc: dict[str, Any], has_impossible: bool) -> str:
    declared = str(doc.get("version", "")).lstrip("v")
    if declared.startswith("2") or has_impossible:
        return "2.0"
    return "1.1"


def _hub_doc(ref: str) -> dict[str, Any]:
    """A hub split in the HF squad layout (``id``, ``title``, ``context``, ``question``,
    ``answers: {text, answer_start}``) as a SQuAD JSON document, so it passes the same checks;
    a question without answers is unanswerable (squad_v2)."""
    rows = load_hub_split(ref)
    missing = {"id", "title", "context", "question", "answers"} - set(rows.column_names)
    if missing:
        raise InputError(ref, f"has no column(s) {sorted(missing)} (columns: {', '.join(rows.column_names)})")
    articles: dict[str, dict[str, list[dict[str, Any]]]] = {}
    impossible = False
    for row in rows:
        answers = [
            {"text": t, "answer_start": a}
            for t, a in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True)
        ]
        qa: dict[str, Any] = {"id": row["id"], "question": row["question"], "answers": answers}
        if not answers:
            qa["is_impossible"], impossible = True, True
        articles.setdefault(row["title"], {}).setdefault(row["context"], []).append(qa)
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()
    ]
    return {"version": "v2.0" if impossible else "1.1", "data": data}


def read_squad(path: str | Path, version: str = "auto") -> SquadData:
    """Every question of a SQuAD v1.1 or v2.0 JSON file, checked (see the module docstring).

    ``version="auto"`` takes the file's ``version`` field (``"v2.0"`` → 2.0), or 2.0 when any
    question carries ``is_impossible: true``. Asking for 1.1 on a file with unanswerable
    questions is an error: v1.1 models never answer "no answer", so they would be scored wrongly.
    """
    if version not in SQUAD_VERSIONS:
        raise ConfigError(f"squad_version must be one of {SQUAD_VERSIONS}, got {version!r}")
    if is_hub_ref(path):
        doc, raw = _hub_doc(str(path)), ""  # no file lines to point at: errors name the row's id
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "does not exist")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(path, f"not UTF-8 (byte {e.start})") from None
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
    loc = _Locator(path, raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(path, 'expected a SQuAD object {"data": [...], "version": ...}')

    examples: list[SquadExample] = []
    titles: list[str] = []
    seen: dict[str, str] = {}
    for a, article in enumerate(doc["data"]):
        where_a = f"data[{a}]"
        title = _field(article, "title", str, loc, where_a)
        paragraphs = _field(article, "paragraphs", list, loc, where_a)
        if title in titles:
            raise loc.error(f"{where_a}.title", f"article title {title!r} appears twice")
        titles.append(title)
        for p, paragraph in enumerate(paragraphs):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, loc, where_p)
            for q, qa in enumerate(_field(paragraph, "qas", list, loc, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                examples.append(_read_question(qa, title, context, loc, where_q, seen))
    if not examples:
        raise InputError(path, "no questions")
    has_impossible = any(ex.is_impossible for ex in examples)
    found = _file_version(doc, has_impossible)
    if version == "1.1" and has_impossible:
        raise InputError(
            path, "squad_version 1.1 was asked for, but the file has unanswerable (v2) questions"
        )
    used = found if version == "auto" else version
    return SquadData(str(path), used, examples, [t for t in titles if any(ex.title == t for ex in examples)])


def _read_question(
    qa: Any, title: str, context: str, loc: _Locator, where: str, seen: dict[str, str]
) -> SquadExample:
    qid = qa.get("id") if isinstance(qa, dict) else None
    qid = _field(qa, "id", str, loc, where, qid)
    if qid in seen:
        raise loc.error(where, f"duplicate question id (first at {seen[qid]})", qid)
    seen[qid] = where
    question = _field(qa, "question", str, loc, where, qid)
    if not question.strip():
        raise loc.error(f"{where}.question", "empty question", qid)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise loc.error(f"{where}.is_impossible", f"expected true/false, got {impossible!r}", qid)
    raw_answers = _field(qa, "answers", list, loc, where, qid)
    if impossible and raw_answers:
        raise loc.error(where, "is_impossible is true but answers is not empty", qid)
    if not impossible and not raw_answers:
        raise loc.error(where, "no answers (and is_impossible is not true)", qid)
    answers = []
    for k, answer in enumerate(raw_answers):
        where_k = f"{where}.answers[{k}]"
        text = _field(answer, "text", str, loc, where_k, qid)
        start = _field(answer, "answer_start", int, loc, where_k, qid)
        if not text.strip():
            raise loc.error(f"{where_k}.text", "empty answer text", qid)
        found = context[start : start + len(text)] if start >= 0 else ""
        if found != text:
            raise loc.error(
                f"{where_k}.answer_start",
                f"{start} does not match the text: context[{start}:{start + len(text)}] is {found!r}, "
                f"the answer is {text!r}",
                qid,
            )
        answers.append(Answer(text, start))
    return SquadExample(qid, title, question, context, tuple(answers), impossible)


# ---------------------------------------------------------------- split by article


def is_eval_title(title: str, eval_fraction: float, seed: int) -> bool:
    """Whether the article ``title`` is held out (see the module docstring)."""
    digest = hashlib.sha256(f"{seed}\0{title}".encode()).digest()
    return int.from_bytes(digest, "big") < eval_fraction * 2**256


def eval_titles(titles: Sequence[str], eval_fraction: float, seed: int) -> set[str]:
    """The held-out articles among ``titles``; both sides must be non-empty."""
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must lie strictly between 0 and 1, got {eval_fraction}")
    unique = set(titles)
    held_out = {t for t in unique if is_eval_title(t, eval_fraction, seed)}
    if not held_out or held_out == unique:
        side = "eval" if not held_out else "train"
        raise ConfigError(
            f"splitting {len(unique)} article(s) with eval_fraction {eval_fraction} and split_seed {seed} "
            f"leaves no {side} article; change either, or give a separate dev_path"
        )
    return held_out


def select_split(data: SquadData, split: str, eval_fraction: float, seed: int) -> SquadData:
    """The ``train`` or ``eval`` articles of ``data`` (``all`` = ``data`` itself)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return data
    held_out = eval_titles(data.titles, eval_fraction, seed)
    keep = (lambda t: t in held_out) if split == "eval" else (lambda t: t not in held_out)
    return SquadData(
        data.path,
        data.version,
        [ex for ex in data.examples if keep(ex.title)],
        [t for t in data.titles if keep(t)],
    )


def subsample(data: SquadData, max_examples: int, seed: int) -> SquadData:
    """A seeded random subset of questions (file order kept), or ``data`` when it fits."""
    if max_examples <= 0 or len(data) <= max_examples:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=max_examples, replace=False))
    examples = [data.examples[i] for i in keep]
    titles = {ex.title for ex in examples}
    return SquadData(data.path, data.version, examples, [t for t in data.titles if t in titles])


# ---------------------------------------------------------------- offsets


class _Tokenizer(Protocol):
    sp: Any
    num_threads: int
    cls_id: int
    sep_id: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...


@dataclass
class EncodedContext:
    """A context's token ids and, per token, its character span ``[starts[i], ends[i])`` in the
    original text, leading whitespace excluded. ``valid[i]`` is False for pieces that cover only
    whitespace (a lone ``▁``); they can be inside an answer but never start or end one."""

    ids: list[int]
    starts: np.ndarray  # int64 [n]
    ends: np.ndarray  # int64 [n]

    @property
    def valid(self) -> np.ndarray:
        return self.starts < self.ends


def token_spans(
    text: str, offsets: Sequence[tuple[int, int]], pieces: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Character spans of pieces in ``text`` from SentencePiece's offset mapping (see module doc)."""
    n = len(offsets)
    starts = np.fromiter((s for s, _ in offsets), dtype=np.int64, count=n)
    ends = np.fromiter((e for _, e in offsets), dtype=np.int64, count=n)
    for i in range(n):
        s, e = int(starts[i]), int(ends[i])
        while s < e and text[s].isspace():
            s += 1
        starts[i] = s
    # A piece left without characters although it stands for some (all but the last byte-fallback
    # piece of a character; "▁f" of NFKC("ﬁ") = "fi") shares the span of the piece that holds them.
    for i in range(n - 2, -1, -1):
        if starts[i] == ends[i] and pieces[i] != "▁" and starts[i + 1] == starts[i]:
            ends[i] = ends[i + 1]
    return starts, ends


def encode_contexts(tokenizer: _Tokenizer, texts: Sequence[str]) -> list[EncodedContext]:
    """Token ids plus character spans of each text, in one batched SentencePiece call."""
    out = tokenizer.sp.encode(list(texts), out_type="offset_mapping", num_threads=tokenizer.num_threads)
    encoded = []
    for text, item in zip(texts, out, strict=True):
        starts, ends = token_spans(text, item["offsets"], item["pieces"])
        encoded.append(EncodedContext(list(item["ids"]), starts, ends))
    return encoded


def answer_token_span(ctx: EncodedContext, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Context token indices ``(first, last)`` of the smallest run of whole pieces covering the
    characters ``[start_char, end_char)``; None when no piece overlaps them."""
    valid = ctx.valid
    first = np.flatnonzero(valid & (ctx.ends > start_char))
    last = np.flatnonzero(valid & (ctx.starts < end_char))
    if first.size == 0 or last.size == 0 or last[-1] < first[0]:
        return None
    return int(first[0]), int(last[-1])


def char_span(ctx: EncodedContext, first: int, last: int) -> tuple[int, int]:
    """Characters ``[start, end)`` of the context covered by tokens ``first..last``."""
    return int(ctx.starts[first]), int(ctx.ends[last])


# ---------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowConfig:
    """How questions and contexts become model inputs (stored in a QA model's config.json)."""

    max_len: int = 384
    doc_stride: int = 128
    max_query_len: int = 64

    def __post_init__(self) -> None:
        if self.doc_stride < 1 or self.max_query_len < 1:
            raise ConfigError(
                f"doc_stride and max_query_len must be >= 1, got {self.doc_stride}, {self.max_query_len}"
            )
        if self.context_budget(self.max_query_len) < 16:
            raise ConfigError(
                f"max_len {self.max_len} leaves {self.context_budget(self.max_query_len)} context tokens per "
                f"window after a {self.max_query_len}-token question; use max_len >= {self.max_query_len + 19} "
                "(256 or 384 are usual for SQuAD)"
            )

    def context_budget(self, query_len: int) -> int:
        return self.max_len - query_len - 3  # [CLS] q [SEP] ctx [SEP]


@dataclass
class Features:
    """Model inputs, one row per window; ``example_index`` points back to the question.

    ``context_offset[f]`` is the sequence position of window f's first context token, which is
    context token ``doc_start[f]``; the window holds ``doc_len[f]`` of them.
    """

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    example_index: list[int] = field(default_factory=list)
    context_offset: list[int] = field(default_factory=list)
    doc_start: list[int] = field(default_factory=list)
    doc_len: list[int] = field(default_factory=list)
    start_positions: list[int] = field(default_factory=list)
    end_positions: list[int] = field(default_factory=list)
    contexts: list[EncodedContext] = field(default_factory=list)  # per example
    unmappable_answers: int = 0  # answers no piece overlaps (never seen on real data)

    def __len__(self) -> int:
        return len(self.input_ids)


def window_starts(n_tokens: int, budget: int, stride: int) -> list[int]:
    """Start offsets of the context windows: every ``stride`` tokens until one reaches the end."""
    starts = [0]
    while starts[-1] + budget < n_tokens:
        starts.append(starts[-1] + min(stride, budget))
    return starts


def build_features(
    tokenizer: _Tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    window: WindowConfig,
    answers: Sequence[Answer | None] | None = None,
) -> Features:
    """Windows of every (question, context) pair; with ``answers`` (None = unanswerable) also the
    start/end labels. Each distinct context is tokenized once."""
    unique = list(dict.fromkeys(contexts))
    encoded = dict(zip(unique, encode_contexts(tokenizer, unique), strict=True))
    query_ids = tokenizer.encode([q.strip() for q in questions])
    feats = Features()
    for i, (q_ids, context) in enumerate(zip(query_ids, contexts, strict=True)):
        ctx = encoded[context]
        feats.contexts.append(ctx)
        q_ids = q_ids[: window.max_query_len]
        budget = window.context_budget(len(q_ids))
        target = None
        if answers is not None and answers[i] is not None:
            answer = answers[i]
            target = answer_token_span(ctx, answer.start, answer.start + len(answer.text))
            if target is None:
                feats.unmappable_answers += 1
        prefix = [tokenizer.cls_id, *q_ids, tokenizer.sep_id]
        for start in window_starts(len(ctx.ids), budget, window.doc_stride):
            piece = ctx.ids[start : start + budget]
            feats.input_ids.append(prefix + piece + [tokenizer.sep_id])
            feats.token_type_ids.append([0] * len(prefix) + [1] * (len(piece) + 1))
            feats.example_index.append(i)
            feats.context_offset.append(len(prefix))
            feats.doc_start.append(start)
            feats.doc_len.append(len(piece))
            if target is not None and start <= target[0] and target[1] < start + len(piece):
                feats.start_positions.append(target[0] - start + len(prefix))
                feats.end_positions.append(target[1] - start + len(prefix))
            else:
                feats.start_positions.append(CLS_POSITION)
                feats.end_positions.append(CLS_POSITION)
    return feats


def example_features(
    tokenizer: _Tokenizer, examples: Sequence[SquadExample], window: WindowConfig
) -> Features:
    """Training windows of SQuAD examples, labelled with each question's first answer."""
    return build_features(
        tokenizer,
        [ex.question for ex in examples],
        [ex.context for ex in examples],
        window,
        answers=[ex.answers[0] if ex.answers else None for ex in examples],
    )


# ---------------------------------------------------------------- n-best decoding


@dataclass(frozen=True)
class DecodeConfig:
    max_answer_length: int = 30
    n_best: int = 20
    allow_null: bool = False  # v2 models may answer "no answer"
    null_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.max_answer_length < 1 or self.n_best < 1:
            raise ConfigError(
                f"max_answer_length and n_best must be >= 1, got {self.max_answer_length}, {self.n_best}"
            )


@dataclass(frozen=True)
class SpanPrediction:
    """The answer to one question. ``start`` = -1 and ``text`` = "" mean no answer.

    ``score`` is the chosen answer's softmax probability over the n-best spans (plus the null
    answer when allowed). ``null_score_diff`` = null score - best span score (+inf without any
    span), the quantity the v2 threshold compares; ``best_text``/``best_start`` are the best
    non-empty span even when "no answer" won.
    """

    text: str
    start: int
    score: float
    null_score_diff: float
    best_text: str
    best_start: int
    nbest: tuple[tuple[str, int, float], ...] = ()  # (text, start, start+end logit) best first


def nbest_in_window(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    ctx: EncodedContext,
    context_offset: int,
    doc_start: int,
    doc_len: int,
    cfg: DecodeConfig,
) -> list[tuple[float, int, int]]:
    """Candidate spans of one window: ``(score, first, last)`` in context-token indices, from the
    ``n_best`` best starts x ``n_best`` best ends among the window's valid context tokens, with
    ``first <= last`` and at most ``max_answer_length`` tokens."""
    positions = np.arange(doc_len)
    valid = ctx.valid[doc_start : doc_start + doc_len]
    if not valid.any():
        return []
    s = start_logits[context_offset : context_offset + doc_len]
    e = end_logits[context_offset : context_offset + doc_len]
    cand = positions[valid]
    top_s = cand[np.argsort(-s[cand], kind="stable")[: cfg.n_best]]
    top_e = cand[np.argsort(-e[cand], kind="stable")[: cfg.n_best]]
    scores = s[top_s][:, None] + e[top_e][None, :]  # [n_s, n_e]
    length = top_e[None, :] - top_s[:, None] + 1
    ok = (length >= 1) & (length <= cfg.max_answer_length)
    i, j = np.nonzero(ok)
    return [
        (float(scores[a, b]), doc_start + int(top_s[a]), doc_start + int(top_e[b]))
        for a, b in zip(i, j, strict=True)
    ]


def decode_example(
    context: str,
    ctx: EncodedContext,
    windows: Sequence[tuple[np.ndarray, np.ndarray, int, int, int]],
    cfg: DecodeConfig,
) -> SpanPrediction:
    """The answer to one question from its windows' logits.

    ``windows`` holds ``(start_logits, end_logits, context_offset, doc_start, doc_len)`` per
    window. Spans from all windows compete on ``start + end`` logit; the same character span seen
    in two overlapping windows keeps its best score. The null score is the smallest
    ``[CLS]`` start + end score over the windows (the window most sure there is an answer), as
    in BERT's and HF's SQuAD v2 post-processing; "no answer" wins when
    ``null - best_span > null_threshold``.
    """
    best: dict[tuple[int, int], float] = {}
    null_score = math.inf
    for start_logits, end_logits, offset, doc_start, doc_len in windows:
        null_score = min(null_score, float(start_logits[CLS_POSITION] + end_logits[CLS_POSITION]))
        for score, first, last in nbest_in_window(
            start_logits, end_logits, ctx, offset, doc_start, doc_len, cfg
        ):
            span = char_span(ctx, first, last)
            if span[1] > span[0] and score > best.get(span, -math.inf):
                best[span] = score
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[: cfg.n_best]
    nbest = tuple((context[s:e], s, score) for (s, e), score in ranked)
    if not nbest:
        return SpanPrediction("", -1, 1.0, math.inf, "", -1, ())
    best_text, best_start, best_score = nbest[0]
    diff = null_score - best_score
    logits = np.array([c[2] for c in nbest] + ([null_score] if cfg.allow_null else []))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if cfg.allow_null and diff > cfg.null_threshold:
        return SpanPrediction("", -1, float(probs[-1]), diff, best_text, best_start, nbest)
    return SpanPrediction(best_text, best_start, float(probs[0]), diff, best_text, best_start, nbest)


def decode_features(
    contexts: Sequence[str],
    feats: Features,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    cfg: DecodeConfig,
) -> list[SpanPrediction]:
    """One prediction per question, in the order ``build_features`` was given them."""
    per_example: list[list[tuple[np.ndarray, np.ndarray, int, int, int]]] = [[] for _ in contexts]
    for f, i in enumerate(feats.example_index):
        per_example[i].append(
            (start_logits[f], end_logits[f], feats.context_offset[f], feats.doc_start[f], feats.doc_len[f])
        )
    return [
        decode_example(context, feats.contexts[i], per_example[i], cfg) for i, context in enumerate(contexts)
    ]
