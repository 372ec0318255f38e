"""Evaluation pictures: which ones a report yields, and that each is a real PNG."""

from __future__ import annotations

from pathlib import Path

from plm_core.eval_plots import evaluation_plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_and_history_give_their_pictures(tmp_path: Path) -> None:
    report = {"labels": ["negative", "positive"], "confusion": [[40, 10], [5, 45]]}
    history = [{"step": 10, "epoch": 0.5, "train_loss": 0.7, "accuracy": 0.6}, {"step": 20, "accuracy": 0.8}]
    made = evaluation_plots(report, tmp_path / "a", history)
    assert [p.name for p in made] == ["finetune_curve.png", "confusion_matrix.png"]
    ner = evaluation_plots({"per_entity": {"PER": {"f1": 0.9}, "LOC": {"f1": 0.5}}}, tmp_path / "b")
    assert [p.name for p in ner] == ["per_entity_f1.png"]
    for p in made + ner:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000


def test_nothing_to_draw_draws_nothing(tmp_path: Path) -> None:
    assert evaluation_plots({"accuracy": 0.5}, tmp_path, [{"step": 1, "epoch": 1.0}]) == []
