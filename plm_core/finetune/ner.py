"""NER fine-tuning (token classification, CoNLL-2003 by default) and its evaluation.

Words to pieces: every word is encoded on its own with SentencePiece (pieces never cross
whitespace, so this equals encoding the joined sentence) and the word's label sits on its first
piece; the other pieces and [CLS]/[SEP]/padding carry -100, so the loss and the predictions are
per word, as in BERT's CoNLL setup. A word that encodes to no piece at all (a character that
normalisation deletes) gets [UNK] so that it still has a prediction.

Long sentences are split, never cut: when a sentence's pieces do not fit ``max_len - 2``, it is
divided into consecutive windows of whole words, each window is a separate training example,
and at prediction time the windows' word tags are joined back, so every word of every sentence
is scored. Only a single word longer than a whole window loses pieces (its first piece, which
carries its label, is kept). Both are counted and reported (``windows``, ``split_sentences``,
``truncated_words``).

The step loop is ``finetune.trainer.fit`` (early stopping on dev entity F1, best weights kept).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.classification import bucketed_batches, trainer_config
from plm_core.finetune.conll import ConllData, Sentence, read_conll
from plm_core.finetune.model_init import build_task_model, save_task_model
from plm_core.finetune.ner_metrics import entity_scores
from plm_core.finetune.task_data import length_sorted_batches
from plm_core.finetune.trainer import fit
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.io import load_config, load_weights
from plm_core.models.tasks import ForTokenClassification
from plm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]
TASK = "ner"
EVAL_BATCH_SIZE = 64


@dataclass
class Window:
    """One model input: a run of whole words ``[first_word, first_word + len(word_starts))`` of
    sentence ``sentence``, as ``[CLS] pieces [SEP]``; ``word_starts[k]`` is the position of the
    k-th word's first piece. ``labels`` (training only) holds a label id there and -100 elsewhere."""

    sentence: int
    first_word: int
    input_ids: list[int]
    word_starts: list[int]
    labels: list[int] | None = None


@dataclass
class Encoded:
    windows: list[Window]
    counts: dict[str, int]


def word_pieces(tokenizer: Tokenizer, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """Piece ids of every word, per sentence (one batched SentencePiece call for all words)."""
    flat = [w for words in sentences for w in words]
    encoded = tokenizer.encode(flat) if flat else []
    out: list[list[list[int]]] = []
    i = 0
    for words in sentences:
        out.append([ids or [tokenizer.unk_id] for ids in encoded[i : i + len(words)]])
        i += len(words)
    return out


def _word_windows(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Greedy ``[start, end)`` word ranges whose piece counts sum to at most ``budget`` (a word
    longer than the budget gets a window of its own, to be truncated)."""
    ranges: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > budget:
            ranges.append((start, i))
            start, used = i, 0
        used += n
    ranges.append((start, len(lengths)))
    return ranges


def encode_sentences(
    tokenizer: Tokenizer,
    sentences: Sequence[Sequence[str]],
    max_len: int,
    tag_ids: Sequence[Sequence[int]] | None = None,
) -> Encoded:
    """Windows of ``[CLS] pieces [SEP]`` (at most ``max_len`` ids) covering every word, with
    first-piece labels when ``tag_ids`` is given; see the module docstring."""
    if max_len < 3:
        raise ConfigError(f"max_len must leave room for [CLS], a piece and [SEP], got {max_len}")
    budget = max_len - 2
    counts = {"sentences": len(sentences), "windows": 0, "split_sentences": 0, "truncated_words": 0}
    windows: list[Window] = []
    for s, pieces in enumerate(word_pieces(tokenizer, sentences)):
        ranges = _word_windows([len(p) for p in pieces], budget)
        counts["split_sentences"] += len(ranges) > 1
        for start, end in ranges:
            ids, starts, labels = [tokenizer.cls_id], [], [IGNORE_INDEX]
            for w in range(start, end):
                word = pieces[w]
                if len(word) > budget:
                    word = word[:budget]
                    counts["truncated_words"] += 1
                starts.append(len(ids))
                ids.extend(word)
                if tag_ids is not None:
                    labels.extend([tag_ids[s][w]] + [IGNORE_INDEX] * (len(word) - 1))
            ids.append(tokenizer.sep_id)
            labels.append(IGNORE_INDEX)
            windows.append(Window(s, start, ids, starts, labels if tag_ids is not None else None))
    counts["windows"] = len(windows)
    return Encoded(windows, counts)


def pad_windows(windows: Sequence[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (and ``labels``, -100 on padding) padded to the longest."""
    width = max(len(w.input_ids) for w in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for i, w in enumerate(windows):
        input_ids[i, : len(w.input_ids)] = torch.tensor(w.input_ids)
        mask[i, : len(w.input_ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if windows[0].labels is not None:
        labels = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
        for i, w in enumerate(windows):
            labels[i, : len(w.labels or [])] = torch.tensor(w.labels)
        batch["labels"] = labels
    return batch


@torch.inference_mode()
def predict_word_probs(
    model: nn.Module, encoded: Encoded, pad_id: int, batch_size: int = EVAL_BATCH_SIZE
) -> list[np.ndarray]:
    """Per sentence, the label probabilities of each word's first piece: ``[n_words, C]``
    float32, windows joined back in word order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = encoded.windows
    per_window: list[np.ndarray] = [np.empty(0)] * len(windows)
    for idx in length_sorted_batches([len(w.input_ids) for w in windows], batch_size):
        batch = pad_windows([windows[i] for i in idx], pad_id)
        logits = model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))[
            "logits"
        ]
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        for row, i in enumerate(idx):
            per_window[i] = probs[row, windows[i].word_starts]
    model.train(was_training)
    by_sentence: list[list[np.ndarray]] = [[] for _ in range(encoded.counts["sentences"])]
    for w, probs in zip(windows, per_window, strict=True):  # windows are in sentence/word order
        by_sentence[w.sentence].append(probs)
    return [np.concatenate(parts) for parts in by_sentence]


def predict_tags(
    model: nn.Module,
    tokenizer: Tokenizer,
    sentences: Sequence[Sequence[str]],
    labels: Sequence[str],
    max_len: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[list[list[str]], list[np.ndarray], dict[str, int]]:
    """Predicted IOB2 tags per word, the per-word probabilities, and the window counts."""
    encoded = encode_sentences(tokenizer, sentences, max_len)
    probs = predict_word_probs(model, encoded, tokenizer.pad_id, batch_size)
    tags = [[labels[j] for j in p.argmax(axis=-1)] for p in probs]
    return tags, probs, encoded.counts


def build_token_classifier(
    model_cfg: ModelConfig, num_labels: int, vocab_size: int, pretrained_dir: Path | None
) -> tuple[ForTokenClassification, ModelConfig]:
    """The token classifier and its body config (``model_init.build_task_model``)."""
    return build_task_model(
        lambda c: ForTokenClassification(c, num_labels), model_cfg, vocab_size, pretrained_dir
    )


def read_format(cfg: FinetuneConfig) -> dict[str, Any]:
    """The CoNLL reading switches of a fine-tuning config (also what evaluation reuses)."""
    return {
        "token_column": cfg.token_column,
        "tag_column": cfg.tag_column,
        "tag_scheme": cfg.tag_scheme,
        "separator": cfg.column_separator,
    }


def _subsample(data: ConllData, max_examples: int, seed: int) -> list[Sentence]:
    if max_examples <= 0 or len(data) <= max_examples:
        return data.sentences
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=max_examples, replace=False))
    return [data.sentences[i] for i in keep]


def _load_task(cfg: FinetuneConfig) -> tuple[ConllData, ConllData]:
    for name in ("train_path", "dev_path"):
        if not getattr(cfg, name):
            raise ConfigError(f"FinetuneConfig.{name} is empty")
    given = list(cfg.tag_labels) or None
    train = read_conll(cfg.train_path, labels=given, **read_format(cfg))
    if len(train.labels) < 2:
        raise InputError(cfg.train_path, "no entity tags (every tag is O); nothing to learn")
    dev = read_conll(cfg.dev_path, labels=train.labels, **read_format(cfg))
    return train, dev


def _tag_ids(sentences: Sequence[Sentence], labels: Sequence[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(labels)}
    return [[index[t] for t in s.tags] for s in sentences]


def _train_batches(
    windows: list[Window], batch_size: int, seed: int, pad_id: int
) -> Callable[[int], Iterator]:
    lengths = [len(w.input_ids) for w in windows]

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([seed, epoch])
        for idx in bucketed_batches(lengths, batch_size, rng):
            yield pad_windows([windows[i] for i in idx], pad_id)

    return epoch_batches


def finetune_ner(
    tokenizer_dir: Path,
    pretrained_dir: Path | None,
    model_cfg: ModelConfig,
    cfg: FinetuneConfig,
    out_dir: Path,
    on_metrics: MetricsCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune a token classifier on CoNLL files, keep the best dev-F1 weights, and write a
    self-contained model directory (model.safetensors + config.json with task "ner" and the IOB2
    tag names as labels, tokenizer/, metrics.json; docs/contracts.md).

    ``pretrained_dir`` is a pretrain stage directory (its body is loaded) or None for random init
    from ``model_cfg``. Returns dev_f1/dev_precision/dev_recall of the kept weights, the last
    epoch's train loss and the window counts.
    """
    started = time.perf_counter()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    pretrained_dir = Path(pretrained_dir) if pretrained_dir is not None else None
    tokenizer = Tokenizer.load(tokenizer_dir, num_threads=cfg.threads)
    train, dev = _load_task(cfg)
    labels = train.labels
    train_sentences = _subsample(train, cfg.max_train_examples, cfg.seed)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model, body_cfg = build_token_classifier(model_cfg, len(labels), tokenizer.vocab_size, pretrained_dir)
        if cfg.max_len > body_cfg.max_position:
            raise ConfigError(
                f"max_len {cfg.max_len} exceeds the model's max_position {body_cfg.max_position}"
            )
        encoded = encode_sentences(
            tokenizer, [s.words for s in train_sentences], cfg.max_len, _tag_ids(train_sentences, labels)
        )
        dev_words = [s.words for s in dev.sentences]
        dev_encoded = encode_sentences(tokenizer, dev_words, cfg.max_len)
        dev_true = [s.tags for s in dev.sentences]

        def evaluate(m: nn.Module) -> dict[str, float]:
            probs = predict_word_probs(m, dev_encoded, tokenizer.pad_id)
            scores = entity_scores(dev_true, [[labels[j] for j in p.argmax(-1)] for p in probs])
            return {f"dev_{k}": scores[k] for k in ("f1", "precision", "recall", "token_accuracy")}

        steps_per_epoch = -(-len(encoded.windows) // cfg.batch_size)
        batches = _train_batches(encoded.windows, cfg.batch_size, cfg.seed, tokenizer.pad_id)
        result = fit(
            model, batches, steps_per_epoch, trainer_config(cfg, metric="dev_f1"), evaluate, on_metrics
        )
    finally:
        torch.set_num_threads(previous_threads)

    model.cpu()
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "task": TASK,
        "num_labels": len(labels),
        "labels": labels,
        "tag_scheme": "iob2",  # of ``labels``; the input scheme was converted on reading
        "max_len": cfg.max_len,
        "finetune": asdict(cfg),
        "pretrained_from": str(pretrained_dir) if pretrained_dir is not None else None,
    }
    save_task_model(model, body_cfg, out_dir, extra, tokenizer_dir)
    best = result.best
    summary = {
        "dev_f1": best["dev_f1"],
        "dev_precision": best["dev_precision"],
        "dev_recall": best["dev_recall"],
        "dev_token_accuracy": best["dev_token_accuracy"],
        "train_loss": result.train_loss,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "epochs": cfg.epochs,
        "train_examples": len(train_sentences),
        "train_windows": encoded.counts["windows"],
        "train_split_sentences": encoded.counts["split_sentences"],
        "train_truncated_words": encoded.counts["truncated_words"],
        "dev_split_sentences": dev_encoded.counts["split_sentences"],
        "seconds": time.perf_counter() - started,
    }
    metrics = {
        **summary,
        "dev_examples": len(dev),
        "labels": labels,
        "train_scheme": train.scheme,
        "train_counts": train.counts,
        "best": best,
        "history": result.history,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("ner: dev F1 %.4f after %d steps (%.0f s)", summary["dev_f1"], result.steps, summary["seconds"])
    return summary


@dataclass
class NerModel:
    """A fine-tuned NER directory loaded for inference (CPU)."""

    model: ForTokenClassification
    tokenizer: Tokenizer
    labels: list[str]
    max_len: int
    extra: dict[str, Any]


def load_ner_model(model_dir: str | Path) -> NerModel:
    model_dir = Path(model_dir)
    cfg, extra = load_config(model_dir)
    if extra.get("task") != TASK:
        raise InputError(model_dir / "config.json", f"task is {extra.get('task')!r}, expected {TASK!r}")
    labels = list(extra["labels"])
    model = ForTokenClassification(cfg, len(labels))
    load_weights(model, model_dir)
    model.eval()
    return NerModel(model, Tokenizer.load(model_dir / "tokenizer"), labels, int(extra["max_len"]), extra)


def evaluate_ner(
    model_dir: str | Path, data_path: str | Path, cfg: FinetuneConfig | None = None, **format_kwargs: Any
) -> dict[str, Any]:
    """Entity-level scores of a fine-tuned NER directory on a CoNLL file.

    The file is read with the reading switches of ``cfg`` when given (the evaluate stage passes
    the run's FinetuneConfig), else like the training files were (the token/tag columns, scheme
    and separator saved in config.json); ``format_kwargs`` (``token_column``, ``tag_column``,
    ``tag_scheme``, ``separator``) override either. Tags are read against the model's label
    set: a tag the model was never trained on is an error, not a silent miss. Returns
    f1/precision/recall (micro over entities), per_entity, n (sentences), the window counts,
    task "ner" and headline "f1".
    """
    ner = load_ner_model(model_dir)
    if cfg is not None:
        fmt = read_format(cfg)
    else:
        saved = ner.extra.get("finetune", {})
        defaults = read_format(FinetuneConfig())
        fmt = {
            "token_column": saved.get("token_column", defaults["token_column"]),
            "tag_column": saved.get("tag_column", defaults["tag_column"]),
            "tag_scheme": saved.get("tag_scheme", defaults["tag_scheme"]),
            "separator": saved.get("column_separator", defaults["separator"]),
        }
    unknown = set(format_kwargs) - set(fmt)
    if unknown:
        raise ConfigError(f"evaluate_ner: unknown option(s) {sorted(unknown)}; known: {sorted(fmt)}")
    fmt.update({k: v for k, v in format_kwargs.items() if v is not None})
    data = read_conll(data_path, labels=ner.labels, **fmt)
    started = time.perf_counter()
    predicted, _, counts = predict_tags(
        ner.model, ner.tokenizer, [s.words for s in data.sentences], ner.labels, ner.max_len
    )
    report = entity_scores([s.tags for s in data.sentences], predicted)
    report.update(
        task=TASK,
        headline="f1",
        labels=ner.labels,
        data_path=str(data_path),
        split_sentences=counts["split_sentences"],
        windows=counts["windows"],
        truncated_words=counts["truncated_words"],
        seconds=time.perf_counter() - started,
    )
    return report
