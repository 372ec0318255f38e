"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint directory holds
  model.safetensors + config.json   the model, in the same format as a finished model directory
  optimizer.pt                      AdamW state (torch.save; read back with weights_only=True)
  trainer_state.json                step, data position, elapsed time, LR-scheduler state
  history.json                      per-step training loss and validation losses so far

No RNG state is stored: the training loop derives every random draw (masking, dropout, data order)
from ``(seed, step, rank)`` or ``(seed, epoch)``, so a resumed run replays the same randomness
even when it restarts with a different number of workers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from plm_core.config import ModelConfig
from plm_core.errors import InputError
from plm_core.models.io import load_weights, save_model

OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
HISTORY = "history.json"


@dataclass
class TrainerState:
    """Progress of a run. ``samples_seen`` is the data position: the next update starts at that
    offset of the global sample stream, whatever the world size is now."""

    step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    train_history: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss", "lr"}
    val_history: list[dict[str, float]] = field(default_factory=list)  # {"step", "val_loss", "perplexity"}


def save_checkpoint(
    ckpt_dir: Path,
    *,
    model: nn.Module,
    model_cfg: ModelConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    state: TrainerState,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint into ``ckpt_dir``; ``extra`` goes into config.json as for ``save_model``."""
    ckpt_dir = Path(ckpt_dir)
    save_model(model, model_cfg, ckpt_dir, extra)
    torch.save(optimizer.state_dict(), ckpt_dir / OPTIMIZER)
    progress = {k: v for k, v in asdict(state).items() if k not in ("train_history", "val_history")}
    (ckpt_dir / TRAINER_STATE).write_text(
        json.dumps({**progress, "scheduler": scheduler.state_dict()}, indent=2)
    )
    (ckpt_dir / HISTORY).write_text(
        json.dumps({"train": state.train_history, "validation": state.val_history})
    )


def _read_state(ckpt_dir: Path) -> tuple[TrainerState, dict[str, Any]]:
    path = ckpt_dir / TRAINER_STATE
    if not path.is_file():
        raise InputError(path, "missing; not a training checkpoint")
    progress = json.loads(path.read_text())
    scheduler_state = progress.pop("scheduler")
    history = json.loads((ckpt_dir / HISTORY).read_text())
    state = TrainerState(**progress, train_history=history["train"], val_history=history["validation"])
    return state, scheduler_state


def read_trainer_state(ckpt_dir: Path) -> TrainerState:
    """The progress and history of a checkpoint, without touching model or optimizer."""
    return _read_state(Path(ckpt_dir))[0]


def load_checkpoint(
    ckpt_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
) -> TrainerState:
    """Restore model, optimizer and scheduler in place from ``ckpt_dir``; return the run's state."""
    ckpt_dir = Path(ckpt_dir)
    state, scheduler_state = _read_state(ckpt_dir)
    load_weights(model, ckpt_dir)
    # Tensors, numbers and lists only: weights_only refuses anything that would run code.
    optimizer.load_state_dict(torch.load(ckpt_dir / OPTIMIZER, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(scheduler_state)
    return state
