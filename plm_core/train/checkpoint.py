"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint directory holds
  model.safetensors + config.json   the model, in the same format as a finished model directory
  optimizer.pt                      AdamW state (torch.save; read back with weights_only=True)
  trainer_state.json                step, data position, elapsed time, LR-scheduler state
  history.json                      per-step training loss and validation losses so far
  rng_state.json                    torch (CPU and CUDA), NumPy and Python RNG states of every rank

The training loop derives every random draw it makes (masking, dropout, data order) from
``(seed, step, rank)`` or ``(seed, epoch)``, so a resumed run replays the same randomness even when
it restarts with a different number of workers. The RNG states are stored as well so that code
outside that discipline (a library drawing from the global generators) also continues where it
stopped; they are restored only when the world size is unchanged. JSON (base64 for torch's byte
states), never a pickle.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from plm_core.config import ModelConfig
from plm_core.errors import InputError
from plm_core.models.io import load_weights, save_model

OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
HISTORY = "history.json"
RNG_STATE = "rng_state.json"


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
    rng_states: list[dict[str, Any]] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint into ``ckpt_dir``; ``extra`` goes into config.json as for ``save_model``;
    ``rng_states`` is ``capture_rng_state()`` of each rank, in rank order (default: this process);
    ``optimizer_state`` replaces ``optimizer.state_dict()`` (FSDP saves its gathered full state)."""
    ckpt_dir = Path(ckpt_dir)
    save_model(model, model_cfg, ckpt_dir, extra)
    torch.save(
        optimizer_state if optimizer_state is not None else optimizer.state_dict(), ckpt_dir / OPTIMIZER
    )
    progress = {k: v for k, v in asdict(state).items() if k not in ("train_history", "val_history")}
    (ckpt_dir / TRAINER_STATE).write_text(
        json.dumps({**progress, "scheduler": scheduler.state_dict()}, indent=2)
    )
    (ckpt_dir / HISTORY).write_text(
        json.dumps({"train": state.train_history, "validation": state.val_history})
    )
    (ckpt_dir / RNG_STATE).write_text(json.dumps({"ranks": rng_states or [capture_rng_state()]}))


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng_state() -> dict[str, Any]:
    """This process's torch CPU/CUDA, NumPy and Python RNG states, as JSON-able values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }


def restore_rng_state(saved: dict[str, Any]) -> None:
    """Set this process's generators to ``capture_rng_state()``'s values."""
    torch.set_rng_state(_unb64(saved["torch"]))
    if saved["cuda"] and torch.cuda.is_available() and len(saved["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in saved["cuda"]])
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = saved["python"]
    random.setstate((version, tuple(state), py_gauss))


def read_rng_states(ckpt_dir: Path) -> list[dict[str, Any]]:
    """The saved RNG state of each rank ([] for checkpoints written before RNG states were kept)."""
    path = Path(ckpt_dir) / RNG_STATE
    return json.loads(path.read_text())["ranks"] if path.is_file() else []


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


def read_optimizer_state(ckpt_dir: Path) -> dict[str, Any]:
    # Tensors, numbers and lists only: weights_only refuses anything that would run code.
    return torch.load(Path(ckpt_dir) / OPTIMIZER, map_location="cpu", weights_only=True)


def read_scheduler_state(ckpt_dir: Path) -> dict[str, Any]:
    return _read_state(Path(ckpt_dir))[1]


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
    optimizer.load_state_dict(read_optimizer_state(ckpt_dir))
    scheduler.load_state_dict(scheduler_state)
    return state
