"""The generic fine-tuning loop: early stopping, best-weight restore, schedules, frozen params."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plm_core.errors import ConfigError
from plm_core.finetune.trainer import TrainerConfig, fit, lr_factor


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Toy models gain nothing from threads, and on a shared machine two spinning intra-op
    threads per process make each step ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred = self.head(torch.tanh(self.body(x))).squeeze(-1)
        out = {"logits": pred}
        if y is not None:
            out["loss"] = F.mse_loss(pred, y)
        return out


def _toy_batches(n_batches: int = 10, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    batches = []
    for _ in range(n_batches):
        x = torch.randn(16, 4, generator=g)
        batches.append({"x": x, "y": x @ w})
    return batches


def test_early_stopping_stops_after_patience_and_restores_best_weights() -> None:
    model = _Regressor()
    batches = _toy_batches()
    scripted = iter([0.5, 0.8, 0.7, 0.6, 0.95, 0.99])  # best at eval 2, then two worse ones
    snapshots: list[dict[str, torch.Tensor]] = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"dev_accuracy": next(scripted)}

    cfg = TrainerConfig(epochs=5, lr=1e-2, eval_every=3, patience=2, warmup_ratio=0.0)
    result = fit(model, lambda epoch: batches, len(batches), cfg, evaluate=evaluate)

    assert result.stopped_early
    assert len(result.history) == 4  # stopped at the 2nd evaluation without improvement
    assert result.steps == 12
    assert result.best["dev_accuracy"] == 0.8 and result.best["step"] == 6
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[1][k])
    assert not torch.equal(snapshots[1]["head.weight"], snapshots[3]["head.weight"])


def test_no_patience_runs_every_epoch_and_loss_goes_down() -> None:
    model = _Regressor()
    batches = _toy_batches()
    with torch.no_grad():
        before = sum(float(model(**b)["loss"]) for b in batches)
    losses: list[float] = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            loss = sum(float(m(**b)["loss"]) for b in batches)
        losses.append(loss)
        return {"dev_loss": loss}

    cfg = TrainerConfig(epochs=8, lr=3e-2, evals_per_epoch=2, metric="dev_loss", greater_is_better=False)
    result = fit(model, lambda epoch: batches, len(batches), cfg, evaluate=evaluate)
    assert not result.stopped_early
    assert result.steps == 80 and len(result.history) == 16
    assert min(losses) < 0.2 * before
    assert result.best["dev_loss"] == min(losses)


def test_frozen_parameters_do_not_move_and_max_steps_bounds_the_run() -> None:
    model = _Regressor()
    model.body.requires_grad_(False)
    frozen = model.body.weight.clone()
    head = model.head.weight.clone()
    batches = _toy_batches()
    result = fit(model, lambda epoch: batches, len(batches), TrainerConfig(epochs=3, max_steps=7))
    assert result.steps == 7
    assert torch.equal(model.body.weight, frozen)
    assert not torch.equal(model.head.weight, head)


def test_custom_loss_fn_and_metrics_callback() -> None:
    model = _Regressor()
    batches = _toy_batches()
    seen: list[tuple[dict[str, float], int]] = []

    def l1(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (m(batch["x"])["logits"] - batch["y"]).abs().mean()

    cfg = TrainerConfig(epochs=1, log_every=5)
    fit(
        model,
        lambda epoch: batches,
        len(batches),
        cfg,
        on_metrics=lambda m, s: seen.append((m, s)),
        loss_fn=l1,
    )
    assert [s for _, s in seen] == [5, 10]
    assert all(set(m) == {"train_loss", "lr"} for m, _ in seen)


def test_schedules() -> None:
    # Linear and cosine both warm up linearly, then decay to 0 at the end.
    for schedule in ("linear", "cosine"):
        assert lr_factor(0, warmup_steps=10, max_steps=110, schedule=schedule) == pytest.approx(0.1)
        assert lr_factor(9, warmup_steps=10, max_steps=110, schedule=schedule) == pytest.approx(1.0)
        assert lr_factor(110, warmup_steps=10, max_steps=110, schedule=schedule) == pytest.approx(0.0)
    assert lr_factor(60, warmup_steps=10, max_steps=110, schedule="linear") == pytest.approx(0.5)
    assert lr_factor(35, warmup_steps=10, max_steps=110, schedule="cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.25))
    )
    assert lr_factor(100, warmup_steps=10, max_steps=110, schedule="constant") == 1.0


def test_bad_config_and_missing_metric() -> None:
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainerConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="lacks metric"):
        fit(_Regressor(), lambda e: _toy_batches(2), 2, TrainerConfig(), evaluate=lambda m: {"f1": 1.0})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_gpu() -> None:
    model = _Regressor()
    batches = _toy_batches()
    dtypes: list[torch.dtype] = []

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m.body(batch["x"])
        dtypes.append(out.dtype)
        return F.mse_loss(m.head(torch.tanh(out)).squeeze(-1).float(), batch["y"])

    fit(model, lambda epoch: batches, len(batches), TrainerConfig(epochs=1), loss_fn=loss_fn)
    assert next(model.parameters()).device.type == "cuda"
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)


def test_bf16_autocast_can_be_forced_on_cpu() -> None:
    """mixed_precision="bf16" runs the forward under CPU autocast (the GPU path's code, on CPU)."""
    model = _Regressor()
    batches = _toy_batches(2)
    dtypes: list[torch.dtype] = []

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m.body(batch["x"])
        dtypes.append(out.dtype)
        return F.mse_loss(m.head(torch.tanh(out)).squeeze(-1).float(), batch["y"])

    fit(model, lambda e: batches, 2, TrainerConfig(mixed_precision="bf16", device="cpu"), loss_fn=loss_fn)
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert model.body.weight.dtype == torch.float32  # master weights stay fp32
    dtypes.clear()
    fit(model, lambda e: batches, 2, TrainerConfig(device="cpu"), loss_fn=loss_fn)  # auto: fp32 on CPU
    assert dtypes == [torch.float32, torch.float32]
