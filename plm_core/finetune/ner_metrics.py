"""Entity-level NER scores with seqeval (conlleval semantics), and the per-entity F1 chart.

seqeval's default mode reproduces the CoNLL shared task's ``conlleval`` script: an entity is a
maximal chunk of one type, an ``I-X`` after ``O`` or after another type starts a new chunk, and a
predicted entity counts only when its type and both boundaries match a true one. Precision,
recall and F1 are micro-averaged over entities (the figure NER papers report), and per type.
Using the library rather than hand code keeps our numbers comparable with everyone else's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics.sequence_labeling import get_entities


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro precision/recall/F1 over entities, per-entity scores, and counts, JSON-ready.

    ``y_true``/``y_pred`` are IOB2 tag sequences, one per sentence, of equal lengths. A score
    whose denominator is 0 is 0 (no predicted entities: precision 0), as in conlleval.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true sentences but {len(y_pred)} predicted")
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} true tags but {len(p)} predicted")
    if not y_true:
        raise ValueError("no sentences to score")
    true, pred = [list(s) for s in y_true], [list(s) for s in y_pred]
    report = seqeval_report(true, pred, output_dict=True, zero_division=0, digits=6)
    micro = report.pop("micro avg")
    for avg in ("macro avg", "weighted avg"):
        report.pop(avg, None)
    per_entity = {
        kind: {
            "precision": float(s["precision"]),
            "recall": float(s["recall"]),
            "f1": float(s["f1-score"]),
            "support": int(s["support"]),
        }
        for kind, s in sorted(report.items())
    }
    n_tokens = sum(len(s) for s in true)
    correct_tokens = sum(a == b for t, p in zip(true, pred, strict=True) for a, b in zip(t, p, strict=True))
    return {
        "f1": float(micro["f1-score"]),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "per_entity": per_entity,
        "n": len(true),
        "n_tokens": n_tokens,
        "n_true_entities": int(micro["support"]),
        "n_pred_entities": sum(len(get_entities(s)) for s in pred),
        "token_accuracy": correct_tokens / max(1, n_tokens),
    }


def plot_per_entity_f1(report: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of F1 per entity type (support under each name) with the micro F1 as a dashed
    line; PNG for MLflow artifacts. A bare ``Figure`` on the Agg canvas: no pyplot state, so it is
    safe in worker threads. Returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    per_entity = report["per_entity"]
    kinds = sorted(per_entity)
    f1 = [float(per_entity[k]["f1"]) for k in kinds]
    fig = Figure(figsize=(max(4.0, 1.1 * len(kinds) + 2), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.bar([f"{k}\n(n={per_entity[k]['support']})" for k in kinds], f1, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in f1], fontsize=8)
    ax.axhline(report["f1"], color="tab:red", linestyle="--", label=f"micro F1 {report['f1']:.3f}")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("entity F1")
    ax.set_title("NER F1 per entity type")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
