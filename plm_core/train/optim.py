"""AdamW with BERT's weight-decay groups, and linear warmup then linear or cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from plm_core.errors import ConfigError

SCHEDULES = ("linear", "cosine")


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW where only matrices (linear and embedding weights) decay.

    Biases and LayerNorm/RMSNorm gains are 1-D: decaying them pulls normalisation scales toward
    zero and regularises nothing useful, which is why BERT exempts them. Embedding matrices decay,
    as in BERT, GPT-2 and nanoGPT (a tied embedding is also the output projection). The fused
    kernel (one kernel over all parameters) runs on CPU and CUDA; on CPU it is ~5x faster than
    the default loop, which matters for small models where the dense embedding update is a third
    of a step. Parameters must already be on their device (fused AdamW needs them there).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def warmup_linear_decay(step: int, *, warmup_steps: int, max_steps: int) -> float:
    """LR factor for the update with 0-based index ``step``: ramps to 1 over ``warmup_steps``
    updates, then decays linearly to reach 0 just after the last of ``max_steps`` updates.

    The first update already gets ``1 / warmup_steps`` of the LR (HF's schedule gives it 0, an
    update that only moves AdamW's moments).
    """
    return lr_factor(step, warmup_steps=warmup_steps, max_steps=max_steps)


def lr_factor(
    step: int, *, warmup_steps: int, max_steps: int, schedule: str = "linear", min_lr_ratio: float = 0.0
) -> float:
    """LR factor of update ``step`` (0-based): linear warmup to 1, then ``schedule`` down to
    ``min_lr_ratio`` just after the last update.

    ``progress`` runs from 0 at the first post-warmup update to 1 one step after the last, so
    "linear" with ``min_lr_ratio=0`` is exactly ``warmup_linear_decay``; "cosine" is half a cosine
    period over the same span (GPT-3 / Chinchilla style, usually with ``min_lr_ratio=0.1``).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "linear",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    lr_factor(0, warmup_steps=warmup_steps, max_steps=max_steps, schedule=schedule)  # fail early on a typo

    def factor(step: int) -> float:
        return lr_factor(
            step, warmup_steps=warmup_steps, max_steps=max_steps, schedule=schedule, min_lr_ratio=min_lr_ratio
        )

    return LambdaLR(optimizer, factor)
