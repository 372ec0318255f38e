"""Sequence-classification fine-tuning (SST-2 by default), from a pretrained encoder or random init.

CPU time is the budget here, so batches are length-bucketed: the shuffled training set is cut
into chunks of ~50 batches, each chunk sorted by length and sliced into batches, and the batch
order shuffled again. Padding then costs almost nothing while every epoch still sees a different,
seeded order. Dev accuracy is measured four times per epoch and the best weights are what gets
saved, because small models on SST-2 often peak before the last step.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.metrics import accuracy, macro_f1
from plm_core.finetune.task_data import (
    ClassificationData,
    encode_for_classification,
    load_classification,
    pad_batch,
)
from plm_core.models.factory import classification_model
from plm_core.models.io import load_config, load_encoder_into, save_model
from plm_core.serving.classifier import predict_logits
from plm_core.tokenizer import Tokenizer
from plm_core.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]

GRAD_CLIP = 1.0
EVALS_PER_EPOCH = 4
BUCKET_CHUNK_BATCHES = 50
LOG_EVERY_STEPS = 50
EVAL_BATCH_SIZE = 128
TOKENIZER_FILES = ("spm.model", "tokenizer.json")


def bucketed_batches(lengths: list[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch of index batches: shuffled, sorted by length within chunks, batch order shuffled."""
    lengths_arr = np.asarray(lengths)
    perm = rng.permutation(len(lengths))
    chunk = batch_size * BUCKET_CHUNK_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(perm), chunk):
        idx = perm[start : start + chunk]
        idx = idx[np.argsort(lengths_arr[idx], kind="stable")]
        batches.extend(idx[i : i + batch_size].tolist() for i in range(0, len(idx), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def subsample(data: ClassificationData, max_examples: int, seed: int) -> ClassificationData:
    """A deterministic random subset (original order kept), or ``data`` itself when it fits."""
    if max_examples <= 0 or len(data) <= max_examples:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=max_examples, replace=False))
    return ClassificationData(
        texts=[data.texts[i] for i in keep],
        label_ids=[data.label_ids[i] for i in keep],
        label_names=data.label_names,
    )


def build_classifier(
    model_cfg: ModelConfig, num_labels: int, vocab_size: int, pretrained_dir: Path | None
) -> tuple[torch.nn.Module, ModelConfig]:
    """The model and the body config it was built with.

    With a pretrained directory its config.json wins over ``model_cfg``: the checkpoint's tensors
    only fit the sizes they were trained with.
    """
    if pretrained_dir is not None:
        body_cfg, _ = load_config(pretrained_dir)
    else:
        body_cfg = model_cfg if model_cfg.vocab_size else replace(model_cfg, vocab_size=vocab_size)
    if body_cfg.vocab_size < vocab_size:
        source = pretrained_dir / "config.json" if pretrained_dir is not None else "model config"
        raise ConfigError(
            f"{source}: vocab_size {body_cfg.vocab_size} is smaller than the tokenizer's {vocab_size}"
        )
    model = classification_model(body_cfg, num_labels)
    if pretrained_dir is not None:
        load_encoder_into(model, pretrained_dir)
    return model, body_cfg


@dataclass
class _Encoded:
    """Model-ready examples: ``[CLS] ids [SEP]`` sequences and their label ids."""

    sequences: list[list[int]]
    labels: list[int]


class _DevTracker:
    """Scores dev, reports it, and keeps a copy of the best weights (by dev accuracy)."""

    def __init__(
        self, dev: _Encoded, pad_id: int, num_labels: int, on_metrics: MetricsCallback | None
    ) -> None:
        self.dev, self.pad_id, self.num_labels, self.on_metrics = dev, pad_id, num_labels, on_metrics
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {"dev_accuracy": -1.0}
        self._best_state: dict[str, torch.Tensor] = {}
        self._started = time.perf_counter()

    def score(self, model: torch.nn.Module, step: int, epoch: float) -> None:
        logits = predict_logits(model, self.dev.sequences, self.pad_id, EVAL_BATCH_SIZE)
        predicted = logits.argmax(dim=-1).tolist()
        scores = {
            "dev_accuracy": accuracy(self.dev.labels, predicted),
            "dev_f1": macro_f1(self.dev.labels, predicted, self.num_labels),
        }
        record = {"step": step, "epoch": epoch, **scores, "seconds": time.perf_counter() - self._started}
        self.history.append(record)
        log.info("step %d epoch %.2f dev accuracy %.4f f1 %.4f", step, epoch, *scores.values())
        if self.on_metrics is not None:
            self.on_metrics(scores, step)
        if record["dev_accuracy"] > self.best["dev_accuracy"]:
            self.best = record
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def load_best_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self._best_state)


def _eval_points(batches_per_epoch: int) -> set[int]:
    """1-based step counts within an epoch after which dev is scored; always includes the last."""
    return {math.ceil(k * batches_per_epoch / EVALS_PER_EPOCH) for k in range(1, EVALS_PER_EPOCH + 1)}


def _load_task(cfg: FinetuneConfig) -> tuple[ClassificationData, ClassificationData]:
    for name in ("train_path", "dev_path"):
        if not getattr(cfg, name):
            raise ConfigError(f"FinetuneConfig.{name} is empty")
    train = load_classification(cfg.train_path, cfg.text_field, cfg.label_field)
    if len(train.label_names) < 2:
        raise InputError(cfg.train_path, f"only one label ({train.label_names[0]!r}); nothing to classify")
    dev = load_classification(cfg.dev_path, cfg.text_field, cfg.label_field, labels=train.label_names)
    return subsample(train, cfg.max_train_examples, cfg.seed), dev


def _train(
    model: torch.nn.Module,
    cfg: FinetuneConfig,
    train: _Encoded,
    tracker: _DevTracker,
    pad_id: int,
    on_metrics: MetricsCallback | None,
) -> float:
    """The step loop, leaving the best dev weights in ``model``; returns the last epoch's mean loss."""
    rng = np.random.default_rng(cfg.seed)
    lengths = [len(s) for s in train.sequences]
    labels = torch.tensor(train.labels, dtype=torch.long)
    batches_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total_steps = batches_per_epoch * cfg.epochs
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, round(cfg.warmup_ratio * total_steps))
    scheduler = build_scheduler(optimizer, warmup_steps=warmup, max_steps=total_steps)
    eval_points = _eval_points(batches_per_epoch)

    step = 0
    window: list[float] = []
    epoch_loss = 0.0
    for epoch in range(cfg.epochs):
        model.train()
        epoch_loss = 0.0
        progress = tqdm(
            bucketed_batches(lengths, cfg.batch_size, rng),
            desc=f"finetune epoch {epoch + 1}/{cfg.epochs}",
            mininterval=2.0,
        )
        for i, idx in enumerate(progress, start=1):
            input_ids, attention_mask = pad_batch([train.sequences[j] for j in idx], pad_id)
            loss = model(input_ids, attention_mask=attention_mask, labels=labels[idx])["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            step += 1
            window.append(float(loss.detach()))
            epoch_loss += window[-1]
            if step % LOG_EVERY_STEPS == 0:
                mean = sum(window) / len(window)
                progress.set_postfix(loss=f"{mean:.4f}", refresh=False)
                if on_metrics is not None:
                    on_metrics({"train_loss": mean, "lr": scheduler.get_last_lr()[0]}, step)
                window.clear()
            if i in eval_points:
                tracker.score(model, step, epoch + i / batches_per_epoch)
        progress.close()
    tracker.load_best_into(model)
    return epoch_loss / batches_per_epoch


def finetune_classification(
    tokenizer_dir: Path,
    pretrained_dir: Path | None,
    model_cfg: ModelConfig,
    cfg: FinetuneConfig,
    out_dir: Path,
    on_metrics: MetricsCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune, keep the best dev checkpoint and write a self-contained classifier directory.

    ``out_dir`` receives model.safetensors + config.json, tokenizer/ and metrics.json (see
    docs/contracts.md). ``on_metrics(metrics, step)`` receives train loss every 50 steps and dev
    scores four times per epoch.
    """
    started = time.perf_counter()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    pretrained_dir = Path(pretrained_dir) if pretrained_dir is not None else None
    tokenizer = Tokenizer.load(tokenizer_dir, num_threads=cfg.threads)
    train, dev = _load_task(cfg)
    num_labels = len(train.label_names)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model, body_cfg = build_classifier(model_cfg, num_labels, tokenizer.vocab_size, pretrained_dir)
        if cfg.max_len > body_cfg.max_position:
            raise ConfigError(
                f"max_len {cfg.max_len} exceeds the model's max_position {body_cfg.max_position}"
            )
        encoded_train, encoded_dev = (
            _Encoded(encode_for_classification(tokenizer, d.texts, cfg.max_len), d.label_ids)
            for d in (train, dev)
        )
        tracker = _DevTracker(encoded_dev, tokenizer.pad_id, num_labels, on_metrics)
        train_loss = _train(model, cfg, encoded_train, tracker, tokenizer.pad_id, on_metrics)
    finally:
        torch.set_num_threads(previous_threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "task": "classification",
        "num_labels": num_labels,
        "labels": train.label_names,
        "max_len": cfg.max_len,
        "finetune": asdict(cfg),
        "pretrained_from": str(pretrained_dir) if pretrained_dir is not None else None,
    }
    save_model(model, body_cfg, out_dir, extra=extra)
    (out_dir / "tokenizer").mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, out_dir / "tokenizer" / name)
    seconds = time.perf_counter() - started
    result = {
        "dev_accuracy": tracker.best["dev_accuracy"],
        "dev_f1": tracker.best["dev_f1"],
        "train_loss": train_loss,
        "epochs": cfg.epochs,
        "train_examples": len(train),
        "seconds": seconds,
    }
    metrics = {
        **result,
        "dev_examples": len(dev),
        "labels": train.label_names,
        "best": tracker.best,
        "history": tracker.history,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return result
