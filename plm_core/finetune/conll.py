"""CoNLL-style token/tag files: reading, tag-scheme conversion and the label set.

A file holds one token per line with whitespace-separated columns (CoNLL-2003: ``token POS chunk
NER``), blank lines between sentences, and ``-DOCSTART-`` lines between documents. Which column
is the token and which the tag is configurable, so CoNLL-2002, WNUT or two-column ``token tag``
files read the same way; the column count is fixed by the file's first token line and every
other line must match it.

Tags come as IOB2 ("BIO": every entity starts with ``B-``), IOB1 (the 2003 release: ``I-`` starts
an entity, ``B-`` only separates two adjacent entities of one type) or BIOES/IOBES (also BILOU's
``L-``/``U-``). Everything is converted to IOB2, the one internal scheme the model predicts and
seqeval scores, so a model trained from a BIOES file is evaluated like any other.

Reading is strict, as for classification: a wrong column count, a malformed tag (``X-PER``,
``B-``), a tag sequence the declared scheme forbids, or a tag outside a given label set raises
``InputError`` naming the file and the line. Nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plm_core.errors import ConfigError, InputError
from plm_core.finetune.hub import is_hub_ref, load_hub_split

DOCSTART = "-DOCSTART-"
OUTSIDE = "O"
# Accepted spellings of the input scheme -> canonical name.
TAG_SCHEMES = {
    "auto": "auto",
    "bio": "iob2",
    "iob2": "iob2",
    "iob1": "iob1",
    "iob": "iob1",
    "bioes": "bioes",
    "iobes": "bioes",
    "bilou": "bioes",
}
# BILOU's last/unit prefixes are BIOES's end/single.
_PREFIX_ALIASES = {"L": "E", "U": "S"}


@dataclass
class Sentence:
    """Words with their IOB2 tags; ``line`` is the 1-based line of the first word (for errors)."""

    words: list[str]
    tags: list[str]
    line: int


@dataclass
class ConllData:
    """The sentences of one file, the IOB2 label set, and what the reader saw."""

    sentences: list[Sentence]
    labels: list[str]
    scheme: str  # the input scheme after "auto" was resolved
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sentences)


@dataclass
class _RawSentence:
    words: list[str]
    tags: list[str]
    lines: list[int]


def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", "")``; also accepts ``B_PER``. Raises
    ValueError on anything else."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    if len(tag) > 2 and tag[1] in "-_":
        prefix, kind = tag[0].upper(), tag[2:]
        prefix = _PREFIX_ALIASES.get(prefix, prefix)
        if prefix in "BIES" and kind.strip() == kind:
            return prefix, kind
    raise ValueError(f"malformed tag {tag!r}; expected O or B-/I-/E-/S-<TYPE>")


def _check_scheme(tags: list[tuple[str, str]], scheme: str) -> int | None:
    """Index of the first tag that ``scheme`` forbids at its position, or None when valid."""
    for i, (prefix, kind) in enumerate(tags):
        prev_prefix, prev_kind = tags[i - 1] if i else (OUTSIDE, "")
        next_prefix, next_kind = tags[i + 1] if i + 1 < len(tags) else (OUTSIDE, "")
        if scheme in ("iob1", "iob2") and prefix in "ES":
            return i
        if scheme == "iob2" and prefix == "I" and not (prev_prefix in "BI" and prev_kind == kind):
            return i
        # IOB1: B- only splits two adjacent entities of the same type.
        if scheme == "iob1" and prefix == "B" and not (prev_prefix in "BI" and prev_kind == kind):
            return i
        if scheme == "bioes":
            continues = prefix in "IE"
            if continues and not (prev_prefix in "BI" and prev_kind == kind):
                return i
            # B and I must be followed by I or E of their type.
            if prefix in "BI" and not (next_prefix in "IE" and next_kind == kind):
                return i
    return None


def _detect_scheme(sentences: list[list[tuple[str, str]]]) -> str:
    """The first of IOB2, IOB1, BIOES that every sentence satisfies (IOB2 when tags are all O)."""
    if any(p in "ES" for s in sentences for p, _ in s):
        return "bioes"
    for scheme in ("iob2", "iob1"):
        if all(_check_scheme(s, scheme) is None for s in sentences):
            return scheme
    return "iob2"  # neither fits: report the first IOB2 violation, the usual scheme today


def to_iob2(tags: list[tuple[str, str]], scheme: str) -> list[str]:
    """Convert one sentence's (already validated) split tags of ``scheme`` to IOB2 strings."""
    out: list[str] = []
    for i, (prefix, kind) in enumerate(tags):
        if prefix == OUTSIDE:
            out.append(OUTSIDE)
            continue
        prev_prefix, prev_kind = tags[i - 1] if i else (OUTSIDE, "")
        if scheme == "iob1":
            # An I- starts an entity unless it continues one of its own type.
            starts = prefix == "B" or not (prev_prefix in "BI" and prev_kind == kind)
        else:  # iob2, bioes: B- and S- start, I- and E- continue
            starts = prefix in "BS"
        out.append(f"{'B' if starts else 'I'}-{kind}")
    return out


def labels_for_types(types: Sequence[str]) -> list[str]:
    """``["O", "B-T1", "I-T1", ...]`` over sorted entity types: the discovered label set. Both
    prefixes of every type are included so the model can express any entity length."""
    return [OUTSIDE] + [f"{p}-{t}" for t in sorted(set(types)) for p in "BI"]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                yield n, line.rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _column_index(index: int, width: int, name: str, path: Path, n: int) -> int:
    resolved = index + width if index < 0 else index
    if not 0 <= resolved < width:
        raise InputError(path, f"{name} {index} does not exist in a line of {width} columns", line=n)
    return resolved


def _raw_sentences(
    path: Path, token_column: int, tag_column: int, separator: str | None, counts: dict[str, int]
) -> Iterator[_RawSentence]:
    width: int | None = None
    current = _RawSentence([], [], [])
    for n, line in _lines(path):
        columns = line.split(separator) if separator else line.split()
        if separator:
            columns = [c.strip() for c in columns]
        if not line.strip():
            if current.words:
                yield current
                current = _RawSentence([], [], [])
            continue
        if line.split(maxsplit=1)[0] == DOCSTART:  # whatever the separator
            counts["documents"] += 1
            if current.words:
                yield current
                current = _RawSentence([], [], [])
            continue
        if width is None:
            width = len(columns)
            if width < 2:
                raise InputError(path, "a token line needs at least a token and a tag column", line=n)
            if _column_index(token_column, width, "token_column", path, n) == _column_index(
                tag_column, width, "tag_column", path, n
            ):
                raise ConfigError(f"token_column {token_column} and tag_column {tag_column} are one column")
        if len(columns) != width:
            raise InputError(
                path, f"{len(columns)} columns, expected {width} (as on the first token line)", line=n
            )
        word, tag = columns[token_column], columns[tag_column]
        if not word:
            raise InputError(path, "empty token", line=n)
        current.words.append(word)
        current.tags.append(tag)
        current.lines.append(n)
    if current.words:
        yield current


def _hub_sentences(ref: str) -> Iterator[_RawSentence]:
    """Sentences of a hub split with ``tokens`` and ``ner_tags`` columns (the HF conll2003 layout:
    tags as class ids with their names in the features, or as strings); ``lines`` are row numbers."""
    rows = load_hub_split(ref)
    for column in ("tokens", "ner_tags"):
        if column not in rows.column_names:
            raise InputError(ref, f"has no {column!r} column (columns: {', '.join(rows.column_names)})")
    names = getattr(getattr(rows.features["ner_tags"], "feature", None), "names", None)
    for n, row in enumerate(rows, start=1):
        words, tags = list(row["tokens"]), list(row["ner_tags"])
        if len(words) != len(tags):
            raise InputError(ref, f"{len(words)} tokens but {len(tags)} tags", line=n)
        if any(not isinstance(t, str) for t in tags):
            if names is None:
                raise InputError(ref, "ner_tags are ids but the dataset names no tag classes", line=n)
            tags = [names[int(t)] for t in tags]
        if words:
            yield _RawSentence(words, tags, [n] * len(words))


def read_conll(
    path: str | Path,
    token_column: int = 0,
    tag_column: int = -1,
    tag_scheme: str = "auto",
    labels: Sequence[str] | None = None,
    separator: str = "",
) -> ConllData:
    """Read every sentence of a CoNLL-style file, tags converted to IOB2.

    ``token_column``/``tag_column`` index the columns (negative counts from the end; the default
    -1 is the NER column of CoNLL-2003 and the tag of a two-column file). ``separator`` "" splits
    on any whitespace; give "\\t" for files whose tokens contain spaces. ``tag_scheme`` is
    "auto" (IOB2, else IOB1, else BIOES, whichever the whole file satisfies), "bio"/"iob2",
    "iob1" or "bioes"/"iobes"/"bilou". ``labels`` (IOB2 names) fixes the label set, e.g. the
    one a model was trained with; otherwise it is discovered from the file.
    """
    if tag_scheme not in TAG_SCHEMES:
        raise ConfigError(f"tag_scheme {tag_scheme!r}; choose one of {sorted(TAG_SCHEMES)}")
    counts = {"documents": 0, "sentences": 0, "tokens": 0}
    if is_hub_ref(path):
        raw = list(_hub_sentences(str(path)))
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such file")
        raw = list(_raw_sentences(path, token_column, tag_column, separator or None, counts))
    if not raw:
        raise InputError(path, "no sentences")

    split: list[list[tuple[str, str]]] = []
    for s in raw:
        tags = []
        for tag, n in zip(s.tags, s.lines, strict=True):
            try:
                tags.append(_split_tag(tag))
            except ValueError as e:
                raise InputError(path, str(e), line=n) from None
        split.append(tags)

    scheme = TAG_SCHEMES[tag_scheme]
    if scheme == "auto":
        scheme = _detect_scheme(split)
    allowed = set(labels) if labels is not None else None
    sentences: list[Sentence] = []
    types: set[str] = set()
    for s, tags in zip(raw, split, strict=True):
        bad = _check_scheme(tags, scheme)
        if bad is not None:
            context = f" after {s.tags[bad - 1]!r}" if bad else " at the start of a sentence"
            raise InputError(
                path, f"tag {s.tags[bad]!r}{context} is not valid {scheme.upper()}", line=s.lines[bad]
            )
        iob2 = to_iob2(tags, scheme)
        if allowed is not None:
            for tag, original, n in zip(iob2, s.tags, s.lines, strict=True):
                if tag not in allowed:
                    raise InputError(
                        path,
                        f"tag {original!r} ({tag} in IOB2) is not in the label set {list(labels or [])}",
                        line=n,
                    )
        types.update(kind for _, kind in tags if kind)
        sentences.append(Sentence(s.words, iob2, s.lines[0]))
    counts["sentences"] = len(sentences)
    counts["tokens"] = sum(len(s.words) for s in sentences)
    label_set = list(labels) if labels is not None else labels_for_types(sorted(types))
    return ConllData(sentences=sentences, labels=label_set, scheme=scheme, counts=counts)
