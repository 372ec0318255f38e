"""Extractive QA fine-tuning (SQuAD v1.1 / v2.0) and its evaluation.

``finetune_qa`` trains ``ForQuestionAnswering`` (start/end logits over any family's body) on
context windows (``squad.build_features``) with the generic loop of ``finetune.trainer``, scoring
dev with the official EM/F1 after every epoch and keeping the best epoch's weights.

Which questions are dev: with ``dev_path`` empty or the same file as ``train_path`` (the shared
data has SQuAD dev only), the file is split by article (``squad.eval_titles``: seeded title hash,
``eval_fraction`` of the articles held out). The split's parameters and the file's sha256 go into
config.json under ``"qa_split"``, so ``evaluate_qa(model_dir, same_file)`` scores exactly the
held-out articles (``split="auto"``), never the ones the model was trained on. With a separate
dev file, all of train_path trains and all of dev_path is dev.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.classification import bucketed_batches
from plm_core.finetune.hub import data_digest
from plm_core.finetune.model_init import build_task_model, save_task_model
from plm_core.finetune.squad import (
    SPLITS,
    DecodeConfig,
    SpanPrediction,
    SquadData,
    WindowConfig,
    example_features,
    read_squad,
    select_split,
    subsample,
)
from plm_core.finetune.squad_metrics import squad_v1_scores, squad_v2_scores
from plm_core.finetune.trainer import MetricsCallback, TrainerConfig, fit
from plm_core.models.tasks import ForQuestionAnswering
from plm_core.serving.qa import QaPredictor, pad_features, predict_spans
from plm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 64


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve() or data_digest(a) == data_digest(b)


def load_qa_task(cfg: FinetuneConfig) -> tuple[SquadData, SquadData, dict[str, Any] | None]:
    """Train and dev questions for ``cfg``, and the split record (None with a separate dev file)."""
    if not cfg.train_path:
        raise ConfigError("FinetuneConfig.train_path is empty (a SQuAD JSON file)")
    data = read_squad(cfg.train_path, cfg.squad_version)
    if not cfg.dev_path or _same_file(cfg.dev_path, cfg.train_path):
        train = select_split(data, "train", cfg.eval_fraction, cfg.split_seed)
        dev = select_split(data, "eval", cfg.eval_fraction, cfg.split_seed)
        split = {
            "data_path": str(cfg.train_path),
            "data_sha256": data_digest(cfg.train_path),
            "eval_fraction": cfg.eval_fraction,
            "seed": cfg.split_seed,
            "train": train.counts(),
            "eval": dev.counts(),
            "eval_titles": sorted(dev.titles),
        }
    else:
        dev = read_squad(cfg.dev_path, data.version)
        train, split = data, None
    return subsample(train, cfg.max_train_examples, cfg.seed), dev, split


def build_qa_model(
    model_cfg: ModelConfig, vocab_size: int, pretrained_dir: Path | None
) -> tuple[ForQuestionAnswering, ModelConfig]:
    """The QA model and its body config (``model_init.build_task_model``)."""
    return build_task_model(ForQuestionAnswering, model_cfg, vocab_size, pretrained_dir)


def qa_scores(data: SquadData, predictions: list[SpanPrediction], null_threshold: float) -> dict[str, Any]:
    """Official EM/F1 (percentages) of ``predictions`` (in ``data.examples`` order).

    v2 adds ``HasAns_*``/``NoAns_*`` and the official best-threshold sweep (``best_f1`` at
    ``best_f1_thresh``, in units of ``score_null - best_span``) over the best non-empty spans.
    """
    gold = data.gold
    answers = {ex.qid: p.text for ex, p in zip(data.examples, predictions, strict=True)}
    if data.version == "1.1":
        v1 = squad_v1_scores(gold, answers)
        return {"exact_match": v1["exact_match"], "f1": v1["f1"], "n": v1["total"]}
    diffs = {ex.qid: _finite(p.null_score_diff) for ex, p in zip(data.examples, predictions, strict=True)}
    best_spans = {ex.qid: p.best_text for ex, p in zip(data.examples, predictions, strict=True)}
    v2 = squad_v2_scores(gold, answers, diffs, null_threshold, answered_predictions=best_spans)
    report: dict[str, Any] = {"exact_match": v2.pop("exact"), "f1": v2.pop("f1"), "n": v2.pop("total")}
    report.update(v2)
    return report


def _finite(x: float) -> float:
    """No-answer scores go to JSON; a question without any candidate span gets a large finite one."""
    return x if math.isfinite(x) else 1e9


def _dev_metrics(report: dict[str, Any]) -> dict[str, float]:
    keys = ("exact_match", "f1", "HasAns_f1", "NoAns_f1", "best_f1")
    return {f"dev_{k}": float(report[k]) for k in keys if k in report}


def finetune_qa(
    tokenizer_dir: Path,
    pretrained_dir: Path | None,
    model_cfg: ModelConfig,
    cfg: FinetuneConfig,
    out_dir: Path,
    on_metrics: MetricsCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune on SQuAD windows, keep the best-dev epoch and write a self-contained QA directory.

    ``out_dir`` receives model.safetensors + config.json (``task: "qa"``, the window/decoding
    settings and ``qa_split``), tokenizer/ and metrics.json. Returns ``dev_exact_match`` and
    ``dev_f1`` (percentages) among other figures.
    """
    started = time.perf_counter()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    pretrained_dir = Path(pretrained_dir) if pretrained_dir is not None else None
    window = WindowConfig(cfg.max_len, cfg.doc_stride, cfg.max_query_len)
    train, dev, split = load_qa_task(cfg)
    decode = DecodeConfig(cfg.max_answer_length, cfg.n_best, train.version == "2.0", cfg.null_threshold)
    tokenizer = Tokenizer.load(tokenizer_dir, num_threads=cfg.threads)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model, body_cfg = build_qa_model(model_cfg, tokenizer.vocab_size, pretrained_dir)
        if cfg.max_len > body_cfg.max_position:
            raise ConfigError(
                f"max_len {cfg.max_len} exceeds the model's max_position {body_cfg.max_position}"
            )
        feats = example_features(tokenizer, train.examples, window)
        if feats.unmappable_answers:
            raise InputError(
                train.path, f"{feats.unmappable_answers} answer(s) cover no token of their context"
            )
        log.info("qa: %d train questions -> %d windows; %d dev questions", len(train), len(feats), len(dev))
        starts = torch.tensor(feats.start_positions, dtype=torch.long)
        ends = torch.tensor(feats.end_positions, dtype=torch.long)
        lengths = [len(s) for s in feats.input_ids]
        rng = np.random.default_rng(cfg.seed)

        def train_batches(epoch: int) -> Any:
            for idx in bucketed_batches(lengths, cfg.batch_size, rng):
                input_ids, attention_mask, token_type_ids = pad_features(feats, idx, tokenizer.pad_id)
                yield {
                    "input_ids": input_ids,
                    "attention_mask": attention_mask,
                    "token_type_ids": token_type_ids,
                    "start_positions": starts[idx],
                    "end_positions": ends[idx],
                }

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            predictions = predict_spans(
                m,
                tokenizer,
                [ex.question for ex in dev.examples],
                [ex.context for ex in dev.examples],
                window,
                decode,
                EVAL_BATCH_SIZE,
            )
            return _dev_metrics(qa_scores(dev, predictions, cfg.null_threshold))

        trainer_cfg = TrainerConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio,
            evals_per_epoch=1,
            metric="dev_f1",
            seed=cfg.seed,
        )
        result = fit(
            model, train_batches, math.ceil(len(feats) / cfg.batch_size), trainer_cfg, evaluate, on_metrics
        )
        model.to("cpu")
    finally:
        torch.set_num_threads(previous_threads)

    extra = {
        "task": "qa",
        "max_len": cfg.max_len,
        "doc_stride": cfg.doc_stride,
        "max_query_len": cfg.max_query_len,
        "max_answer_length": cfg.max_answer_length,
        "n_best": cfg.n_best,
        "null_threshold": cfg.null_threshold,
        "squad_version": train.version,
        "qa_split": split,
        "finetune": asdict(cfg),
        "pretrained_from": str(pretrained_dir) if pretrained_dir is not None else None,
    }
    save_task_model(model, body_cfg, out_dir, extra, tokenizer_dir)
    out = {
        **{k: v for k, v in result.best.items() if k.startswith("dev_")},
        "train_loss": result.train_loss,
        "epochs": cfg.epochs,
        "steps": result.steps,
        "train_examples": len(train),
        "train_windows": len(feats),
        "dev_examples": len(dev),
        "squad_version": train.version,
        "seconds": time.perf_counter() - started,
    }
    metrics = {**out, "split": split, "best": result.best, "history": result.history}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def evaluate_qa(
    model_dir: str | Path,
    data_path: str | Path,
    cfg: FinetuneConfig | None = None,
    split: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, Any]:
    """Official SQuAD EM/F1 of a QA directory on a SQuAD file.

    ``split``: ``"auto"`` scores only the held-out articles when ``data_path`` is the file the
    model was split-trained on (same sha256 as recorded in config.json) and every question
    otherwise; ``"eval"``/``"train"`` apply the recorded split parameters to ``data_path``;
    ``"all"`` scores every question. ``cfg`` is accepted for the task table's uniform call; the
    model directory's config.json decides windowing, decoding and the split.
    """
    del cfg
    if split not in ("auto", *SPLITS):
        raise ConfigError(f"split must be 'auto' or one of {SPLITS}, got {split!r}")
    predictor = QaPredictor(model_dir)
    model_version = predictor.extra["squad_version"]
    data = read_squad(data_path)
    if data.version == "2.0" and model_version == "1.1":
        raise InputError(data_path, "is SQuAD v2.0 (unanswerable questions); this model was trained on v1.1")
    recorded = predictor.extra.get("qa_split")
    if split == "auto":
        split = "eval" if recorded and recorded["data_sha256"] == data_digest(data_path) else "all"
    if split != "all":
        if not recorded:
            raise ConfigError(f"{model_dir}: the model was not trained on a split file; use split='all'")
        data = select_split(data, split, recorded["eval_fraction"], recorded["seed"])
    predictions = predictor.predict_spans(
        [ex.question for ex in data.examples], [ex.context for ex in data.examples], batch_size
    )
    report = qa_scores(data, predictions, predictor.decode.null_threshold)
    return {
        **report,
        "task": "qa",
        "headline": "f1",
        "squad_version": data.version,
        "split": split,
        "articles": len(data.titles),
    }
