"""Sequence-classification fine-tuning (SST-2 by default), from a pretrained encoder or random init.

CPU time is the budget here, so batches are length-bucketed: the shuffled training set is cut
into chunks of ~50 batches, each chunk sorted by length and sliced into batches, and the batch
order shuffled again. Padding then costs almost nothing while every epoch still sees a different,
seeded order. Dev accuracy is measured ``evals_per_epoch`` times per epoch (four by default) and
the best weights are what gets saved, because small models on SST-2 often peak before the last
step; the step loop itself is ``finetune.trainer.fit`` (early stopping with ``patience``).

``method`` lora/adapter trains through ``finetune.peft`` and saves merged weights; with
``distill_teacher`` the model is a student of another classifier (``finetune.distill``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.distill import TEACHER_LOGITS, build_student, distillation_loss_fn
from plm_core.finetune.metrics import accuracy, macro_f1
from plm_core.finetune.model_init import build_task_model, save_task_model
from plm_core.finetune.peft import METHODS, apply_peft, count_parameters, is_peft_model, merge, save_adapter
from plm_core.finetune.task_data import (
    ClassificationData,
    encode_inputs,
    load_classification,
    model_inputs,
)
from plm_core.finetune.trainer import TrainerConfig, TrainResult, default_loss, fit
from plm_core.models.factory import classification_model
from plm_core.models.io import load_config, load_weights
from plm_core.serving.classifier import predict_logits
from plm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]

GRAD_CLIP = 1.0
BUCKET_CHUNK_BATCHES = 50
LOG_EVERY_STEPS = 50
EVAL_BATCH_SIZE = 128


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
    return data.subset(keep.tolist())


def build_classifier(
    model_cfg: ModelConfig, num_labels: int, vocab_size: int, pretrained_dir: Path | None
) -> tuple[torch.nn.Module, ModelConfig]:
    """The classifier and the body config it was built with (``model_init.build_task_model``)."""
    return build_task_model(
        lambda c: classification_model(c, num_labels), model_cfg, vocab_size, pretrained_dir
    )


@dataclass
class _Encoded:
    """Model-ready examples: ``[CLS] a [SEP] (b [SEP])`` sequences, their segment ids (pairs
    only) and label ids."""

    sequences: list[list[int]]
    segments: list[list[int]] | None
    labels: list[int]

    @classmethod
    def of(cls, tokenizer: Tokenizer, data: ClassificationData, max_len: int) -> _Encoded:
        sequences, segments = encode_inputs(tokenizer, data.texts, max_len, data.text_pairs)
        return cls(sequences, segments, data.label_ids)

    def batch(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        segments = None if self.segments is None else [self.segments[i] for i in idx]
        inputs = model_inputs([self.sequences[i] for i in idx], pad_id, segments)
        inputs["labels"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
        return inputs

    def logits(self, model: torch.nn.Module, pad_id: int) -> torch.Tensor:
        return predict_logits(model, self.sequences, pad_id, EVAL_BATCH_SIZE, self.segments)


def dev_scorer(dev: _Encoded, pad_id: int, num_labels: int) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``trainer.fit``'s ``evaluate``: dev accuracy and macro F1."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        predicted = dev.logits(model, pad_id).argmax(dim=-1).tolist()
        return {
            "dev_accuracy": accuracy(dev.labels, predicted),
            "dev_f1": macro_f1(dev.labels, predicted, num_labels),
        }

    return evaluate


def trainer_config(cfg: FinetuneConfig, metric: str = "dev_accuracy") -> TrainerConfig:
    """The loop settings of a FinetuneConfig (shared by every task's fine-tuning)."""
    return TrainerConfig(
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_schedule=cfg.lr_schedule,
        grad_clip=GRAD_CLIP,
        evals_per_epoch=cfg.evals_per_epoch,
        patience=cfg.patience,
        metric=metric,
        mixed_precision=cfg.mixed_precision,
        device=cfg.device,
        seed=cfg.seed,
        log_every=LOG_EVERY_STEPS,
    )


def _load_task(cfg: FinetuneConfig) -> tuple[ClassificationData, ClassificationData]:
    for name in ("train_path", "dev_path"):
        if not getattr(cfg, name):
            raise ConfigError(f"FinetuneConfig.{name} is empty")
    fields = dict(text_field=cfg.text_field, label_field=cfg.label_field, text_pair_field=cfg.text_pair_field)
    train = load_classification(cfg.train_path, **fields)
    if len(train.label_names) < 2:
        raise InputError(cfg.train_path, f"only one label ({train.label_names[0]!r}); nothing to classify")
    dev = load_classification(cfg.dev_path, labels=train.label_names, **fields)
    return subsample(train, cfg.max_train_examples, cfg.seed), dev


@dataclass
class _Teacher:
    """A fine-tuned classifier directory loaded as a distillation teacher."""

    model: torch.nn.Module
    cfg: ModelConfig
    labels: list[str]

    @classmethod
    def load(cls, model_dir: Path, tokenizer_dir: Path, labels: list[str]) -> _Teacher:
        body_cfg, extra = load_config(model_dir)
        if extra.get("task") != "classification":
            raise ConfigError(
                f"distill_teacher {model_dir} is a {extra.get('task')!r} model, not a classifier"
            )
        if extra.get("classification_head", "pooled") != "pooled":
            raise ConfigError(
                f"distill_teacher {model_dir} is a text-to-text classifier; distil from a pooled one"
            )
        if list(extra["labels"]) != labels:
            raise ConfigError(
                f"distill_teacher {model_dir} has labels {extra['labels']}, the data has {labels}"
            )
        # The vocabulary is what must match: the same ids have to mean the same pieces.
        if (model_dir / "tokenizer" / "spm.model").read_bytes() != (tokenizer_dir / "spm.model").read_bytes():
            raise ConfigError(
                f"distill_teacher {model_dir} was trained with another tokenizer than {tokenizer_dir}"
            )
        model = classification_model(body_cfg, len(labels))
        load_weights(model, model_dir)
        return cls(model.eval(), body_cfg, labels)


def _build_model(
    cfg: FinetuneConfig,
    model_cfg: ModelConfig,
    num_labels: int,
    tokenizer: Tokenizer,
    tokenizer_dir: Path,
    pretrained_dir: Path | None,
    labels: list[str],
) -> tuple[torch.nn.Module, ModelConfig, _Teacher | None]:
    if not cfg.distill_teacher:
        model, body_cfg = build_classifier(model_cfg, num_labels, tokenizer.vocab_size, pretrained_dir)
        return model, body_cfg, None
    teacher = _Teacher.load(Path(cfg.distill_teacher), tokenizer_dir, labels)
    student, body_cfg = build_student(teacher.model, teacher.cfg, cfg.student_layers, cfg.student_hidden)
    return student, body_cfg, teacher


def _train(
    model: torch.nn.Module,
    cfg: FinetuneConfig,
    train: _Encoded,
    dev: _Encoded,
    num_labels: int,
    pad_id: int,
    on_metrics: MetricsCallback | None,
    teacher_logits: torch.Tensor | None,
) -> TrainResult:
    """The step loop (``trainer.fit``) over length-bucketed batches; leaves the best dev weights."""
    rng = np.random.default_rng(cfg.seed)
    lengths = [len(s) for s in train.sequences]

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = bucketed_batches(lengths, cfg.batch_size, rng)
        for idx in tqdm(order, desc=f"finetune epoch {epoch + 1}/{cfg.epochs}", mininterval=2.0):
            batch = train.batch(idx, pad_id)
            if teacher_logits is not None:
                batch[TEACHER_LOGITS] = teacher_logits[idx]
            yield batch

    loss_fn = default_loss
    if teacher_logits is not None:
        loss_fn = distillation_loss_fn(cfg.distill_alpha, cfg.distill_temperature)
    return fit(
        model,
        batches,
        math.ceil(len(lengths) / cfg.batch_size),
        trainer_config(cfg),
        evaluate=dev_scorer(dev, pad_id, num_labels),
        on_metrics=on_metrics,
        loss_fn=loss_fn,
    )


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
    docs/contracts.md); with ``cfg.method`` lora/adapter the saved weights are merged (a plain
    model) and ``adapter/`` holds peft's adapter files as well. With ``cfg.distill_teacher`` the
    model trained is a student of that classifier (``plm_core.finetune.distill``) and
    ``pretrained_dir``/``model_cfg`` are not used. ``on_metrics(metrics, step)`` receives train
    loss every 50 steps and dev scores ``evals_per_epoch`` times per epoch.
    """
    started = time.perf_counter()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    if cfg.method not in METHODS:
        raise ConfigError(f"finetune.method {cfg.method!r}; choose one of {list(METHODS)}")
    if cfg.distill_teacher and cfg.method != "full":
        raise ConfigError("distillation trains the whole student; use method='full' with distill_teacher")
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    pretrained_dir = Path(pretrained_dir) if pretrained_dir is not None else None
    if cfg.seq2seq_head != "pooled":  # T5-style text-to-text (or an unknown head: ConfigError)
        from plm_core.finetune.text2text import check_head, finetune_text2text

        family = load_config(pretrained_dir)[0].family if pretrained_dir is not None else model_cfg.family
        check_head(cfg, family)
        train, dev = _load_task(cfg)
        return finetune_text2text(
            tokenizer_dir, pretrained_dir, model_cfg, cfg, out_dir, train, dev, on_metrics
        )
    tokenizer = Tokenizer.load(tokenizer_dir, num_threads=cfg.threads)
    train, dev = _load_task(cfg)
    num_labels = len(train.label_names)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model, body_cfg, teacher = _build_model(
            cfg, model_cfg, num_labels, tokenizer, tokenizer_dir, pretrained_dir, train.label_names
        )
        if cfg.max_len > body_cfg.max_position:
            raise ConfigError(
                f"max_len {cfg.max_len} exceeds the model's max_position {body_cfg.max_position}"
            )
        encoded_train, encoded_dev = (_Encoded.of(tokenizer, d, cfg.max_len) for d in (train, dev))
        teacher_logits, teacher_report = None, {}
        if teacher is not None:
            teacher_logits = encoded_train.logits(teacher.model, tokenizer.pad_id)
            teacher_scores = dev_scorer(encoded_dev, tokenizer.pad_id, num_labels)(teacher.model)
            teacher_report = {
                "teacher_dev_accuracy": teacher_scores["dev_accuracy"],
                "teacher_parameters": count_parameters(teacher.model).total,
                "teacher_layers": teacher.cfg.num_layers,
                "teacher_hidden": teacher.cfg.hidden_size,
            }
            del teacher
        trained = apply_peft(model, cfg)
        parameters = count_parameters(trained)
        log.info(
            "fine-tuning %s: %d of %d parameters trainable (%.2f%%)",
            cfg.method,
            parameters.trainable,
            parameters.total,
            100 * parameters.fraction,
        )
        run = _train(
            trained, cfg, encoded_train, encoded_dev, num_labels, tokenizer.pad_id, on_metrics, teacher_logits
        )
    finally:
        torch.set_num_threads(previous_threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    trained.to("cpu")
    if is_peft_model(trained):
        save_adapter(trained, out_dir)
    model = merge(trained)
    extra = {
        "task": "classification",
        "num_labels": num_labels,
        "labels": train.label_names,
        "max_len": cfg.max_len,
        "finetune": asdict(cfg),
        "pretrained_from": str(pretrained_dir) if pretrained_dir is not None else None,
    }
    if cfg.distill_teacher:
        extra["distilled_from"] = cfg.distill_teacher
    save_task_model(model, body_cfg, out_dir, extra, tokenizer_dir)
    seconds = time.perf_counter() - started
    result = {
        "dev_accuracy": run.best["dev_accuracy"],
        "dev_f1": run.best["dev_f1"],
        "train_loss": run.train_loss,
        "epochs": cfg.epochs,
        "steps": run.steps,
        "stopped_early": run.stopped_early,
        "train_examples": len(train),
        "method": cfg.method,
        **parameters.as_dict(),
        **teacher_report,
        "seconds": seconds,
    }
    if teacher_report:
        result["student_parameters"] = count_parameters(model).total
    metrics = {
        **result,
        "dev_examples": len(dev),
        "labels": train.label_names,
        "best": run.best,
        "history": run.history,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return result
