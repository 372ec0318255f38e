"""Evaluation pictures logged next to a registered model: confusion matrix, per-entity F1.

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


def evaluation_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every picture ``report`` (an evaluate stage's report.json) has data for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if report.get("confusion") and report.get("labels"):
        made.append(
            plot_confusion_matrix(report["confusion"], report["labels"], out_dir / "confusion_matrix.png")
        )
    if report.get("per_entity"):
        made.append(plot_per_entity_f1(report["per_entity"], out_dir / "per_entity_f1.png"))
    return made
