"""Sequence-classification examples: reading labelled files and turning texts into model inputs.

Reading is strict because a silently skipped line changes what the model is trained or scored on
without anyone noticing: every problem raises ``InputError`` naming the file and the line.

Label rule (one place, used by training and by evaluation):

* Raw labels are JSON integers or strings (CSV/TSV cells are always strings); both are compared by
  their string form, so JSON ``1`` and the cell ``"1"`` are the same label.
* ``labels`` given: a raw label that equals a name maps to that name. When the names are not
  themselves numerals, an integer label is an index into ``labels`` (SST-2's 0/1 against
  ``["negative", "positive"]``). Anything else is an error.
* ``labels`` not given: the label set is discovered from the file. If every label is 0 or 1, the
  names are ``["negative", "positive"]`` (SST-2/GLUE binary sentiment) and the ids keep their value.
  Otherwise integer labels are sorted numerically, any other labels as strings.

Sentence pairs (``text_pair_field``, e.g. MNLI premise/hypothesis) are read from a second field
and encoded ``[CLS] a [SEP] b [SEP]`` with segment ids 0 for ``[CLS] a [SEP]`` and 1 for ``b [SEP]``
(BERT's layout); when the pair is too long, the longer side loses tokens first (HF's
``longest_first``).

Local ``.jsonl``/``.csv``/``.tsv`` files are read here line by line, so errors carry the line number;
``hf:<dataset id>[:<config>]:<split>`` reads a dataset from the HF hub with ``datasets`` (needs
internet), and its errors name the row instead.

Encoding lives here too so that fine-tuning, evaluation and serving build ``[CLS] ids [SEP]``
sequences and padded batches in exactly one way.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from plm_core.errors import InputError
from plm_core.finetune.hub import is_hub_ref, load_hub_split

BINARY_SENTIMENT_NAMES = ["negative", "positive"]


@dataclass
class ClassificationData:
    """Texts with their label ids; ``label_names[label_ids[i]]`` is example i's label."""

    texts: list[str]
    label_ids: list[int]
    label_names: list[str]
    text_pairs: list[str] | None = None  # second segment of each example, for sentence-pair tasks

    def subset(self, indices: list[int]) -> ClassificationData:
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in indices]
        return ClassificationData(
            [self.texts[i] for i in indices], [self.label_ids[i] for i in indices], self.label_names, pairs
        )

    def __len__(self) -> int:
        return len(self.texts)


class _Encoder(Protocol):
    cls_id: int
    sep_id: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...


def _hub_records(ref: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of ``hf:<dataset id>[:<config>]:<split>`` as ``(row_number, record)``, 1-based."""
    yield from enumerate(load_hub_split(ref), start=1)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; blank jsonl lines are separators, not records."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(path, f"malformed JSON: {e.msg}", line=n) from None
                if not isinstance(record, dict):
                    raise InputError(path, "expected a JSON object per line", line=n)
                yield n, record
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for record in reader:
                # line_num is the physical line the record ended on (quoted cells may span lines).
                yield reader.line_num, record
    else:
        raise InputError(path, f"unsupported format {suffix!r}; use .jsonl, .csv or .tsv")


def _label_key(path: Path, value: Any, n: int) -> str:
    # bool is an int subclass; true/false labels are more likely a mistake than a class name.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(path, f"label must be an integer or a string, got {value!r}", line=n)
    key = str(value).strip()
    if not key:
        raise InputError(path, "empty label", line=n)
    return key


def _is_int(key: str) -> bool:
    return key.lstrip("-").isdigit()


def _discover_names(keys: list[str]) -> list[str]:
    distinct = set(keys)
    if distinct <= {"0", "1"}:
        return list(BINARY_SENTIMENT_NAMES)
    if all(_is_int(k) for k in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def load_classification(
    path: str | Path,
    text_field: str = "sentence",
    label_field: str = "label",
    labels: list[str] | None = None,
    text_pair_field: str = "",
) -> ClassificationData:
    """Read every example of a .jsonl/.csv/.tsv file (or an ``hf:`` dataset); see the module
    docstring for the label rule. ``text_pair_field`` non-empty reads sentence pairs."""
    hub = is_hub_ref(path)
    if hub:
        records = _hub_records(str(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such file")
        records = _records(path)
    text_fields = [text_field, text_pair_field] if text_pair_field else [text_field]
    columns: list[list[str]] = [[] for _ in text_fields]
    keys: list[str] = []
    lines: list[int] = []
    try:
        for n, record in records:
            for name in (*text_fields, label_field):
                if name not in record or record[name] is None:
                    raise InputError(path, f"missing field {name!r}", line=n)
            for name, column in zip(text_fields, columns, strict=True):
                text = record[name]
                if not isinstance(text, str) or not text.strip():
                    raise InputError(path, f"empty text in field {name!r}", line=n)
                column.append(text)
            keys.append(_label_key(path, record[label_field], n))
            lines.append(n)
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    texts = columns[0]
    if not texts:
        raise InputError(path, "no examples")

    names = list(labels) if labels is not None else _discover_names(keys)
    index = {name: i for i, name in enumerate(names)}
    ints_index_names = labels is not None and not any(_is_int(name) for name in names)
    if labels is None and set(keys) <= {"0", "1"}:  # 0/1 discovered as negative/positive: keep the ids
        index = {"0": 0, "1": 1}
    label_ids: list[int] = []
    for key, n in zip(keys, lines, strict=True):
        if key in index:
            label_ids.append(index[key])
        elif ints_index_names and _is_int(key) and 0 <= int(key) < len(names):
            label_ids.append(int(key))
        else:
            raise InputError(path, f"label {key!r} is not in the label set {names}", line=n)
    pairs = columns[1] if text_pair_field else None
    return ClassificationData(texts=texts, label_ids=label_ids, label_names=names, text_pairs=pairs)


def encode_for_classification(tokenizer: _Encoder, texts: list[str], max_len: int) -> list[list[int]]:
    """``[CLS] + ids[: max_len - 2] + [SEP]`` per text, unpadded (padding is per batch)."""
    if max_len < 3:
        raise ValueError(f"max_len must leave room for [CLS], a token and [SEP], got {max_len}")
    body = max_len - 2
    return [[tokenizer.cls_id, *ids[:body], tokenizer.sep_id] for ids in tokenizer.encode(texts)]


def _pair_lengths(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Kept lengths under HF's ``longest_first``: trim the longer side one token at a time (the
    second on ties) until both fit; closed form, since documents may be thousands of tokens."""
    if la + lb <= budget:
        return la, lb
    short = min(la, lb)
    if budget - short >= short:
        return (la, budget - la) if la == short else (budget - lb, lb)
    return (budget + 1) // 2, budget // 2


def encode_pairs(
    tokenizer: _Encoder, texts: list[str], text_pairs: list[str], max_len: int
) -> tuple[list[list[int]], list[list[int]]]:
    """``[CLS] a [SEP] b [SEP]`` per pair and its segment ids (0 up to the first [SEP], 1 after),
    truncated longest-first to ``max_len``; unpadded."""
    if len(texts) != len(text_pairs):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} pairs")
    if max_len < 5:
        raise ValueError(f"max_len must leave room for 3 specials and a token per side, got {max_len}")
    sequences: list[list[int]] = []
    segments: list[list[int]] = []
    for a, b in zip(tokenizer.encode(texts), tokenizer.encode(text_pairs), strict=True):
        ka, kb = _pair_lengths(len(a), len(b), max_len - 3)
        sequences.append([tokenizer.cls_id, *a[:ka], tokenizer.sep_id, *b[:kb], tokenizer.sep_id])
        segments.append([0] * (ka + 2) + [1] * (kb + 1))
    return sequences, segments


def encode_inputs(
    tokenizer: _Encoder, texts: list[str], max_len: int, text_pairs: list[str] | None = None
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Sequences and, for pairs, their segment ids (None for single sentences)."""
    if text_pairs is None:
        return encode_for_classification(tokenizer, texts, max_len), None
    return encode_pairs(tokenizer, texts, text_pairs, max_len)


def model_inputs(
    sequences: list[list[int]], pad_id: int, segments: list[list[int]] | None = None
) -> dict[str, torch.Tensor]:
    """``model(**inputs)`` keyword arguments for one batch: input_ids, attention_mask and, for
    pairs, token_type_ids (padded with 0)."""
    input_ids, attention_mask = pad_batch(sequences, pad_id)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if segments is not None:
        token_type_ids, _ = pad_batch(segments, 0)
        inputs["token_type_ids"] = token_type_ids
    return inputs


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence of this batch; returns ``input_ids, attention_mask`` (B, T)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length for inference, so padding costs almost nothing."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
