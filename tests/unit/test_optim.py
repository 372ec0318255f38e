"""LR schedules: warmup, then linear or cosine decay to a floor; a typo fails at build time."""

from __future__ import annotations

import math

import pytest
import torch

from plm_core.errors import ConfigError
from plm_core.train.optim import build_optimizer, build_scheduler, lr_factor, warmup_linear_decay


def test_linear_without_floor_is_the_old_schedule():
    for step in range(12):
        assert lr_factor(step, warmup_steps=3, max_steps=12) == warmup_linear_decay(
            step, warmup_steps=3, max_steps=12
        )


def test_cosine_shape():
    f = [lr_factor(s, warmup_steps=4, max_steps=104, schedule="cosine", min_lr_ratio=0.1) for s in range(104)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup
    assert f[4] == pytest.approx(1.0)  # decay starts at the peak
    assert f[54] == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert f[4 + 25] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))  # never rises after warmup
    assert 0.1 < f[-1] < 0.1 + 1e-3  # the last update is just above the floor
    assert lr_factor(
        200, warmup_steps=4, max_steps=104, schedule="cosine", min_lr_ratio=0.1
    ) == pytest.approx(0.1)


def test_linear_decays_to_the_floor():
    f = [lr_factor(s, warmup_steps=0, max_steps=10, min_lr_ratio=0.2) for s in range(11)]
    assert f == pytest.approx([0.2 + 0.8 * (10 - s) / 10 for s in range(11)])


def test_scheduler_follows_the_factor_and_rejects_unknown_schedules():
    optimizer = build_optimizer(torch.nn.Linear(2, 2), lr=0.1, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup_steps=2, max_steps=8, schedule="cosine", min_lr_ratio=0.1)
    seen = []
    for _ in range(8):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [
        0.1 * lr_factor(s, warmup_steps=2, max_steps=8, schedule="cosine", min_lr_ratio=0.1) for s in range(8)
    ]
    assert seen == pytest.approx(expected)
    with pytest.raises(ConfigError, match="lr_schedule"):
        build_scheduler(optimizer, warmup_steps=2, max_steps=8, schedule="cosin")


def test_fused_adamw():
    optimizer = build_optimizer(torch.nn.Linear(2, 2), lr=0.1, weight_decay=0.0)
    assert optimizer.defaults["fused"] is True
