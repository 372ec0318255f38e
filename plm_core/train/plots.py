"""The loss-curve picture saved beside a pretrained model and logged to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_loss_curve(
    train_history: Sequence[dict[str, float]],
    val_history: Sequence[dict[str, float]],
    path: Path,
    title: str = "MLM pretraining",
) -> None:
    """Training loss per step and validation loss at each evaluation, as a PNG.

    Uses a bare ``Figure`` on the Agg canvas rather than pyplot: no global backend or figure
    registry, so it is safe in worker processes and threads without a display.
    """
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([h["step"] for h in train_history], [h["loss"] for h in train_history], label="train", lw=1)
    if val_history:
        ax.plot(
            [h["step"] for h in val_history],
            [h["val_loss"] for h in val_history],
            "o-",
            label="validation",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per target token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
