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

BINARY_SENTIMENT_NAMES = ["negative", "positive"]


@dataclass
class ClassificationData:
    """Texts with their label ids; ``label_names[label_ids[i]]`` is example i's label."""

    texts: list[str]
    label_ids: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


class _Encoder(Protocol):
    cls_id: int
    sep_id: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...


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
) -> ClassificationData:
    """Read every example of a .jsonl/.csv/.tsv file; see the module docstring for the label rule."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    texts: list[str] = []
    keys: list[str] = []
    lines: list[int] = []
    try:
        for n, record in _records(path):
            for name in (text_field, label_field):
                if name not in record or record[name] is None:
                    raise InputError(path, f"missing field {name!r}", line=n)
            text = record[text_field]
            if not isinstance(text, str) or not text.strip():
                raise InputError(path, f"empty text in field {text_field!r}", line=n)
            texts.append(text)
            keys.append(_label_key(path, record[label_field], n))
            lines.append(n)
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not texts:
        raise InputError(path, "no examples")

    names = list(labels) if labels is not None else _discover_names(keys)
    index = {name: i for i, name in enumerate(names)}
    ints_index_names = labels is not None and not any(_is_int(name) for name in names)
    if labels is None and names == BINARY_SENTIMENT_NAMES:
        index = {"0": 0, "1": 1}
    label_ids: list[int] = []
    for key, n in zip(keys, lines, strict=True):
        if key in index:
            label_ids.append(index[key])
        elif ints_index_names and _is_int(key) and 0 <= int(key) < len(names):
            label_ids.append(int(key))
        else:
            raise InputError(path, f"label {key!r} is not in the label set {names}", line=n)
    return ClassificationData(texts=texts, label_ids=label_ids, label_names=names)


def encode_for_classification(tokenizer: _Encoder, texts: list[str], max_len: int) -> list[list[int]]:
    """``[CLS] + ids[: max_len - 2] + [SEP]`` per text, unpadded (padding is per batch)."""
    if max_len < 3:
        raise ValueError(f"max_len must leave room for [CLS], a token and [SEP], got {max_len}")
    body = max_len - 2
    return [[tokenizer.cls_id, *ids[:body], tokenizer.sep_id] for ids in tokenizer.encode(texts)]


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
