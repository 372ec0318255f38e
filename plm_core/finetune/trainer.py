"""One fine-tuning loop for every task: batches of tensors in, best-on-dev weights out.

Classification, NER and QA differ in how they build batches and score dev, not in how they take
a step, so the step loop lives here once: ``loss_fn(model, batch)`` (default
``model(**batch)["loss"]``), AdamW over the trainable parameters (``train.optim``; frozen
parameters of a LoRA model are skipped), warmup then linear or cosine decay, gradient clipping,
bf16 autocast on CUDA, dev evaluation every N steps (or K times per epoch), early stopping after
``patience`` evaluations without improvement, and the best weights restored at the end.

Why not HF ``Trainer`` or ``accelerate``: our models are plain ``nn.Module``s with dict outputs and
our batches are length-bucketed lists built by each task; the part of those libraries we would use
is these ~150 lines, while they would pull their own logging, checkpointing and argument system
into every fine-tuning run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from plm_core.errors import ConfigError
from plm_core.train.optim import build_optimizer, warmup_linear_decay

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
MetricsCallback = Callable[[dict[str, float], int], None]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, float]]

LR_SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("auto", "bf16", "no")


@dataclass
class TrainerConfig:
    """How to optimise; what to optimise on comes as arguments of ``fit``.

    ``patience`` counts evaluations (not epochs) without an improvement of ``metric`` by more
    than ``min_delta``; 0 switches early stopping off (the best weights are still restored).
    ``eval_every`` > 0 scores dev every that many steps; otherwise ``evals_per_epoch`` times per
    epoch (always including each epoch's last step). ``mixed_precision="auto"`` means bf16
    autocast on CUDA and full precision on CPU, where bf16 matmuls are slower than fp32 on most
    hosts and the numerics would differ from what the served CPU model computes.
    """

    epochs: int = 1
    max_steps: int = 0  # 0 = epochs * steps_per_epoch; > 0 stops there (and sizes the schedule)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    lr_schedule: str = "linear"  # linear | cosine | constant (all after warmup)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    eval_every: int = 0
    evals_per_epoch: int = 4
    patience: int = 0
    metric: str = "dev_accuracy"
    greater_is_better: bool = True
    min_delta: float = 0.0
    mixed_precision: str = "auto"
    device: str = "auto"  # auto = cuda when available, else cpu
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule {self.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"mixed_precision {self.mixed_precision!r}; choose one of {list(MIXED_PRECISION)}"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.patience < 0 or self.eval_every < 0 or self.evals_per_epoch < 1:
            raise ConfigError("patience and eval_every must be >= 0 and evals_per_epoch >= 1")


@dataclass
class TrainResult:
    """What happened: steps taken, every dev evaluation, and the best one (whose weights the model
    holds after ``fit``)."""

    steps: int
    best: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    train_loss: float = float("nan")  # mean loss over the last epoch's steps
    seconds: float = 0.0


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """LR multiplier of update ``step`` (0-based): linear warmup, then the schedule's decay to 0."""
    if schedule == "linear":
        return warmup_linear_decay(step, warmup_steps=warmup_steps, max_steps=max_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, mixed_precision: str) -> Any:
    """bf16 autocast on CUDA unless switched off; asking for bf16 on CPU runs CPU autocast."""
    if mixed_precision == "no" or (mixed_precision == "auto" and device.type != "cuda"):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(**batch)["loss"]


def to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class _BestWeights:
    """A CPU copy of the weights that can change: trainable parameters and buffers. Frozen
    parameters (the body of a LoRA model) never move, so copying them would only cost memory."""

    def __init__(self, model: nn.Module) -> None:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        buffers = {name for name, _ in model.named_buffers()}
        self.keys = trainable | buffers
        self.state: dict[str, torch.Tensor] = {}

    def save(self, model: nn.Module) -> None:
        self.state = {
            k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in self.keys
        }

    def restore(self, model: nn.Module) -> None:
        if self.state:
            missing_ok = model.load_state_dict(self.state, strict=False)
            if missing_ok.unexpected_keys:
                raise RuntimeError(f"best-weights keys not in the model: {missing_ok.unexpected_keys[:5]}")


def _is_better(value: float, best: float | None, cfg: TrainerConfig) -> bool:
    if best is None:
        return True
    return value > best + cfg.min_delta if cfg.greater_is_better else value < best - cfg.min_delta


def _eval_steps(steps_per_epoch: int, cfg: TrainerConfig) -> set[int]:
    """1-based steps within an epoch after which dev is scored (when ``eval_every`` is 0)."""
    k = min(cfg.evals_per_epoch, steps_per_epoch)
    return {math.ceil(i * steps_per_epoch / k) for i in range(1, k + 1)}


def fit(
    model: nn.Module,
    train_batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    cfg: TrainerConfig,
    evaluate: EvalFn | None = None,
    on_metrics: MetricsCallback | None = None,
    loss_fn: LossFn = default_loss,
) -> TrainResult:
    """Train ``model`` in place and leave the best-on-dev weights in it.

    ``train_batches(epoch)`` yields the batches of one epoch (dicts of CPU tensors, moved to the
    device here), ``steps_per_epoch`` of them, which sizes the LR schedule. ``evaluate(model)``
    returns dev metrics including ``cfg.metric``; it is called with the model in eval mode and
    under ``torch.inference_mode`` is up to it. Without ``evaluate`` there is no early stopping
    and the final weights are kept. ``on_metrics(metrics, step)`` receives ``train_loss`` and
    ``lr`` every ``log_every`` steps and every dev evaluation.
    """
    if steps_per_epoch < 1:
        raise ConfigError("no training batches (steps_per_epoch is 0)")
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else steps_per_epoch * cfg.epochs
    warmup = max(1, round(cfg.warmup_ratio * total_steps))
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup_steps=warmup, max_steps=total_steps, schedule=cfg.lr_schedule),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    eval_points = _eval_steps(steps_per_epoch, cfg)
    best_weights = _BestWeights(model)
    result = TrainResult(steps=0)
    best_value: float | None = None
    bad_evals = 0
    window: list[float] = []

    def run_eval(epoch_position: float) -> bool:
        """Score dev, keep the best weights; True when patience has run out."""
        nonlocal best_value, bad_evals
        assert evaluate is not None
        model.eval()
        with autocast_context(device, cfg.mixed_precision):
            scores = evaluate(model)
        model.train()
        if cfg.metric not in scores:
            raise ConfigError(f"evaluate() returned {sorted(scores)}, which lacks metric {cfg.metric!r}")
        record = {"step": result.steps, "epoch": epoch_position, **scores}
        record["seconds"] = time.perf_counter() - started
        result.history.append(record)
        log.info("step %d epoch %.2f %s", result.steps, epoch_position, scores)
        if on_metrics is not None:
            on_metrics(dict(scores), result.steps)
        if _is_better(scores[cfg.metric], best_value, cfg):
            best_value, bad_evals = scores[cfg.metric], 0
            result.best = record
            best_weights.save(model)
            return False
        bad_evals += 1
        return cfg.patience > 0 and bad_evals >= cfg.patience

    model.train()
    stop = False
    for epoch in range(cfg.epochs):
        epoch_losses: list[float] = []
        for i, batch in enumerate(train_batches(epoch), start=1):
            with autocast_context(device, cfg.mixed_precision):
                loss = loss_fn(model, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            result.steps += 1
            value = float(loss.detach())
            window.append(value)
            epoch_losses.append(value)
            if result.steps % cfg.log_every == 0:
                if on_metrics is not None:
                    on_metrics(
                        {"train_loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0]},
                        result.steps,
                    )
                window.clear()
            at_eval = result.steps % cfg.eval_every == 0 if cfg.eval_every > 0 else i in eval_points
            last_step = result.steps >= total_steps
            if evaluate is not None and (at_eval or last_step) and run_eval(epoch + i / steps_per_epoch):
                result.stopped_early = stop = True
            if stop or last_step:
                stop = True
                break
        if epoch_losses:
            result.train_loss = sum(epoch_losses) / len(epoch_losses)
        if stop:
            break
    if result.stopped_early:
        log.info("early stop at step %d: %d evaluations without improvement", result.steps, cfg.patience)
    best_weights.restore(model)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
