"""Evaluation pictures logged next to a registered model: confusion matrix, per-entity F1, the
fine-tuning curve.

Bare ``Figure`` on the Agg canvas (as ``train/plots.py``): no pyplot state, safe in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> Path:
    """Rows are true labels, columns predicted; each cell shows its count."""
    k = len(labels)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.2 * k + 2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), list(labels), rotation=45, ha="right")
    ax.set_yticks(range(k), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(row) for row in confusion), default=0)
    for i, row in enumerate(confusion):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_per_entity_f1(per_entity: dict[str, Any], path: Path) -> Path:
    """One bar per entity type; ``per_entity`` maps type -> {"f1": ..., "support"?: ...} or a float."""
    names = sorted(per_entity)
    scores = [float(v["f1"]) if isinstance(v, dict) else float(v) for v in (per_entity[n] for n in names)]
    fig = Figure(figsize=(max(4, 0.8 * len(names) + 2), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(names, scores, color="tab:blue")
    for x, s in enumerate(scores):
        ax.text(x, s + 0.01, f"{s:.2f}", ha="center", va="bottom")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("F1")
    ax.set_title("entity-level F1 per type")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_history(history: Sequence[dict[str, Any]], path: Path, title: str = "fine-tuning") -> Path | None:
    """Each numeric series of a fine-tuning history (train loss, dev metrics) against the step,
    losses on the left axis, scores on the right; None when there is nothing to draw."""
    skip = {"step", "epoch", "seconds"}
    keys = sorted({k for h in history for k, v in h.items() if k not in skip and isinstance(v, int | float)})
    if not keys or len(history) < 1:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    left = fig.add_subplot()
    right = left.twinx()
    for key in keys:
        points = [(h["step"], h[key]) for h in history if isinstance(h.get(key), int | float) and "step" in h]
        ax = left if "loss" in key else right
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=key, lw=1)
    left.set_xlabel("step")
    left.set_ylabel("loss")
    right.set_ylabel("dev score")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, fontsize=8)
    left.set_title(title)
    left.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def evaluation_plots(
    report: dict[str, Any], out_dir: Path, history: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    """Every picture ``report`` (an evaluate stage's report.json) and the fine-tuning ``history``
    (metrics.json) have data for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    curve = plot_history(history, out_dir / "finetune_curve.png") if history else None
    if curve is not None:
        made.append(curve)
    if report.get("confusion") and report.get("labels"):
        made.append(
            plot_confusion_matrix(report["confusion"], report["labels"], out_dir / "confusion_matrix.png")
        )
    if report.get("per_entity"):
        made.append(plot_per_entity_f1(report["per_entity"], out_dir / "per_entity_f1.png"))
    return made
