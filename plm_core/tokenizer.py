"""SentencePiece tokenizer: training on a sample of the train split, and the ``Tokenizer`` wrapper.

The special tokens of all three model families sit at fixed ids (docs/contracts.md), so a model
config never has to look them up: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 <s>=5 </s>=6`` then
the T5 sentinels ``<extra_id_0>...``. All of them except ``[UNK]`` are SentencePiece *control*
symbols, which the encoder never produces from raw text: a document that contains the string
"[MASK]" is tokenized as ordinary characters and cannot fake a mask.

Text is normalised with SentencePiece's default ``nmt_nfkc`` rule (NFKC, whitespace runs and
newlines become one space): ``decode(encode(x)) == x`` holds for plain single-spaced text, and
line structure is not kept, as usual for BERT-style pretraining.

A vocabulary larger than the sample supports fails with a ``ConfigError`` (``hard_vocab_limit``
stays on) rather than silently producing a smaller vocabulary: the model's embedding size is
derived from ``vocab_size``, so a surprise there is worse than a clear error.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sentencepiece as spm

from plm_core.config import TokenizerConfig
from plm_core.data.shards import shard_files
from plm_core.errors import ConfigError, InputError

MODEL_FILE = "spm.model"
META_FILE = "tokenizer.json"
MODEL_TYPES = ("unigram", "bpe")
# name -> (piece, fixed id); the sentinels follow at len(SPECIAL_TOKENS) onwards.
SPECIAL_TOKENS: dict[str, tuple[str, int]] = {
    "pad": ("[PAD]", 0),
    "unk": ("[UNK]", 1),
    "cls": ("[CLS]", 2),
    "sep": ("[SEP]", 3),
    "mask": ("[MASK]", 4),
    "bos": ("<s>", 5),
    "eos": ("</s>", 6),
}
# Long lines are cut (at a space) below SentencePiece's 4192-byte max_sentence_length, which
# would otherwise drop them from training whole.
MAX_LINE_CHARS = 1000
TRAIN_THREADS = 2


def sentinel_piece(i: int) -> str:
    return f"<extra_id_{i}>"


def _line_batches(train_dir: Path) -> Iterator[list[str]]:
    """Per document, its non-empty trimmed lines, in shard order (list operations, no per-line loop
    in Python except for the rare over-long line)."""
    for path in shard_files(train_dir):
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            for doc in pf.read_row_group(i, columns=["text"])["text"].to_pylist():
                lines = [line for line in map(str.strip, doc.split("\n")) if line]
                if any(len(line) > MAX_LINE_CHARS for line in lines):
                    lines = [_trim(line) for line in lines]
                yield lines


def _trim(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS].rsplit(" ", 1)[0]


def reservoir_sample(batches: Iterable[list[str]], k: int, seed: int) -> tuple[list[str], int]:
    """Uniform sample of ``k`` items from a stream of batches (Li's Algorithm L); return it and the
    number of items seen.

    Algorithm L draws O(k log(n/k)) random numbers and jumps straight to the next item to keep,
    so sampling 300k lines from millions costs little more than reading them. Seeded, so the
    sample is reproducible; batching does not change which items are drawn.
    """
    rng = random.Random(seed)

    def log_random() -> float:
        return math.log(1.0 - rng.random())  # 1 - random() is in (0, 1]: log never sees 0

    def skip(w: float) -> int:
        return int(log_random() / math.log(1.0 - w)) if w < 1.0 else 0

    reservoir: list[str] = []
    w = math.exp(log_random() / k)
    next_index, seen = k + skip(w), 0
    for batch in batches:
        if len(reservoir) < k:
            reservoir += batch[: k - len(reservoir)]
        while next_index < seen + len(batch):
            reservoir[rng.randrange(k)] = batch[next_index - seen]
            w *= math.exp(log_random() / k)
            next_index += skip(w) + 1
        seen += len(batch)
    return reservoir, seen


def _check(cfg: TokenizerConfig) -> None:
    if cfg.model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {cfg.model_type!r}")
    if cfg.num_sentinels < 0 or cfg.sample_sentences <= 0:
        raise ConfigError("num_sentinels must be >= 0 and sample_sentences > 0")
    reserved = len(SPECIAL_TOKENS) + cfg.num_sentinels + (256 if cfg.byte_fallback else 0)
    if cfg.vocab_size <= reserved:
        raise ConfigError(
            f"vocab_size {cfg.vocab_size} leaves no room for learned pieces: {reserved} ids are reserved "
            f"for special tokens, sentinels and byte fallback"
        )


def _trainer_args(cfg: TokenizerConfig) -> dict[str, Any]:
    # SentencePiece places its own four meta pieces at the ids we give; the control symbols then
    # fill the free ids in order: [CLS] [SEP] [MASK] at 2-4, the sentinels from 7.
    meta_pieces: dict[str, Any] = {}
    for name in ("pad", "unk", "bos", "eos"):
        meta_pieces[f"{name}_piece"], meta_pieces[f"{name}_id"] = SPECIAL_TOKENS[name]
    control = [SPECIAL_TOKENS[n][0] for n in ("cls", "sep", "mask")]
    control += [sentinel_piece(i) for i in range(cfg.num_sentinels)]
    return dict(
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        control_symbols=control,
        num_threads=TRAIN_THREADS,
        input_sentence_size=0,  # the sample is already drawn, reproducibly, above
        shuffle_input_sentence=False,
        max_sentence_length=4192,
        minloglevel=2,
        **meta_pieces,
    )


def _metadata(sp: spm.SentencePieceProcessor, cfg: TokenizerConfig) -> dict[str, Any]:
    meta: dict[str, Any] = {"vocab_size": sp.get_piece_size(), "model_type": cfg.model_type}
    for name, (piece, idx) in SPECIAL_TOKENS.items():
        if sp.piece_to_id(piece) != idx:
            raise RuntimeError(f"SentencePiece put {piece} at id {sp.piece_to_id(piece)}, expected {idx}")
        meta[f"{name}_id"] = idx
    first = len(SPECIAL_TOKENS)
    meta["sentinel_ids"] = list(range(first, first + cfg.num_sentinels))
    for i, idx in enumerate(meta["sentinel_ids"]):
        if sp.piece_to_id(sentinel_piece(i)) != idx:
            raise RuntimeError(
                f"SentencePiece put {sentinel_piece(i)} at id {sp.piece_to_id(sentinel_piece(i))}"
            )
    meta["special_ids"] = [idx for _, idx in SPECIAL_TOKENS.values()] + meta["sentinel_ids"]
    return meta


def train_tokenizer(clean_dir: Path, cfg: TokenizerConfig, out_dir: Path) -> dict[str, Any]:
    """Train SentencePiece on a seeded sample of train-split lines; write spm.model + tokenizer.json.

    The unit sampled is a text line (a paragraph in one-paragraph-per-line corpora, a wrapped
    fragment in Gutenberg books): pieces never cross whitespace, so lines teach the same pieces
    as whole paragraphs while ``sample_sentences`` bounds the training text, and time, either way.
    """
    _check(cfg)
    train_dir = Path(clean_dir) / "train"
    sample, seen = reservoir_sample(_line_batches(train_dir), cfg.sample_sentences, cfg.seed)
    if not sample:
        raise InputError(train_dir, "no non-empty lines to train a tokenizer on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, **_trainer_args(cfg)
        )
    except RuntimeError as e:
        if "Vocabulary size" not in str(e):
            raise
        hint = str(e).split("] ", 1)[-1]
        raise ConfigError(
            f"vocab_size {cfg.vocab_size} does not fit a sample of {len(sample)} lines: {hint}"
        ) from None
    proto = model.getvalue()
    meta = _metadata(spm.SentencePieceProcessor(model_proto=proto), cfg)
    out_dir = Path(out_dir)
    (out_dir / MODEL_FILE).write_bytes(proto)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return {
        "vocab_size": meta["vocab_size"],
        "sample_lines": len(sample),
        "lines_seen": seen,
        "sample_chars": sum(map(len, sample)),
    }


class Tokenizer:
    """A trained SentencePiece model plus the fixed special ids from ``tokenizer.json``."""

    def __init__(self, sp: spm.SentencePieceProcessor, meta: dict[str, Any], num_threads: int = 1) -> None:
        self.sp = sp
        self.num_threads = num_threads
        self.vocab_size: int = meta["vocab_size"]
        self.model_type: str = meta["model_type"]
        self.pad_id: int = meta["pad_id"]
        self.unk_id: int = meta["unk_id"]
        self.cls_id: int = meta["cls_id"]
        self.sep_id: int = meta["sep_id"]
        self.mask_id: int = meta["mask_id"]
        self.bos_id: int = meta["bos_id"]
        self.eos_id: int = meta["eos_id"]
        self.sentinel_ids: list[int] = list(meta["sentinel_ids"])
        self.special_ids: frozenset[int] = frozenset(meta["special_ids"])

    @classmethod
    def load(cls, directory: str | Path, num_threads: int = 1) -> Tokenizer:
        """Read ``spm.model`` and ``tokenizer.json`` from a tokenizer stage directory."""
        directory = Path(directory)
        for name in (MODEL_FILE, META_FILE):
            if not (directory / name).is_file():
                raise InputError(directory / name, "does not exist (not a tokenizer directory?)")
        sp = spm.SentencePieceProcessor(model_file=str(directory / MODEL_FILE))
        meta = json.loads((directory / META_FILE).read_text())
        if sp.get_piece_size() != meta["vocab_size"]:
            raise InputError(
                directory,
                f"spm.model has {sp.get_piece_size()} pieces, tokenizer.json says {meta['vocab_size']}",
            )
        return cls(sp, meta, num_threads)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without any special token (callers add [CLS]/[SEP] themselves)."""
        return self.sp.encode(texts, out_type=int, num_threads=self.num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, skipping every special id (padding, [CLS], [SEP], sentinels ...)."""
        return self.sp.decode([int(i) for i in ids if int(i) not in self.special_ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))
