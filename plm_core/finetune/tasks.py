"""One table from task name to its fine-tuning and evaluation functions.

The pipeline, the evaluate stage and ``plm eval`` name a task (``classification``, ``ner``, ``qa``);
this module maps the name to the task's module, imported on first use so that a process that
only classifies never imports the QA code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plm_core.config import FinetuneConfig
from plm_core.errors import ConfigError

TASKS = ("classification", "ner", "qa")
# The metric a task is judged by: the registry gate and the pipeline summary use it.
HEADLINE = {"classification": "accuracy", "ner": "f1", "qa": "f1"}
_FINETUNE = {
    "classification": ("plm_core.finetune.classification", "finetune_classification"),
    "ner": ("plm_core.finetune.ner", "finetune_ner"),
    "qa": ("plm_core.finetune.qa", "finetune_qa"),
}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def finetune(
    task: str,
    tokenizer_dir: Path,
    pretrained_dir: Path | None,
    model_cfg: Any,
    cfg: FinetuneConfig,
    out_dir: Path,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``task`` (see docs/contracts.md for the directory it writes)."""
    check_task(task)
    module, name = _FINETUNE[task]
    fn = getattr(importlib.import_module(module), name)
    return fn(tokenizer_dir, pretrained_dir, model_cfg, cfg, out_dir, on_metrics=on_metrics)


def evaluate(task: str, model_dir: Path, data_path: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """Score a fine-tuned directory on a labelled file with the reading switches of ``cfg``; the
    report names its ``headline`` metric."""
    check_task(task)
    if task == "classification":
        from plm_core.serving.classifier import evaluate_classification

        report = evaluate_classification(
            model_dir, data_path, cfg.text_field, cfg.label_field, cfg.text_pair_field or None
        )
    elif task == "ner":
        from plm_core.finetune.ner import evaluate_ner

        report = evaluate_ner(model_dir, data_path, cfg=cfg)
    else:
        from plm_core.finetune.qa import evaluate_qa

        report = evaluate_qa(model_dir, data_path)
    report = dict(report)
    report.setdefault("task", task)
    report.setdefault("headline", HEADLINE[task])
    return report


def model_task(model_dir: Path) -> str:
    """The task a fine-tuned directory was trained for (its config.json)."""
    from plm_core.models.io import load_config

    _, extra = load_config(Path(model_dir))
    task = str(extra.get("task", ""))
    check_task(task)
    return task


def eval_path(cfg: FinetuneConfig) -> str:
    """The file a task is evaluated on: ``eval_path`` when given, else the dev file."""
    return getattr(cfg, "eval_path", "") or cfg.dev_path
