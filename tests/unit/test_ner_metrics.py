"""Entity-level NER scores against figures derived by hand (conlleval rules), and the F1 chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from plm_core.finetune.ner_metrics import entity_scores, plot_per_entity_f1


def test_seqeval_readme_example() -> None:
    # Gold entities: MISC(3..5), PER(0..1). Predicted: MISC(2..5) (wrong left boundary), PER(0..1).
    # 1 of 2 predicted is right and 1 of 2 gold is found: P = R = F1 = 1/2.
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    report = entity_scores(y_true, y_pred)
    assert report["precision"] == pytest.approx(0.5)
    assert report["recall"] == pytest.approx(0.5)
    assert report["f1"] == pytest.approx(0.5)
    assert report["per_entity"] == {
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }
    assert report["n"] == 2 and report["n_true_entities"] == 2 and report["n_pred_entities"] == 2
    # 8 of 10 tags agree (tags 3 and 4 of sentence 1 differ: O/B-MISC and B-MISC/I-MISC).
    assert report["token_accuracy"] == pytest.approx(0.8)


def test_hand_counted_conlleval_example() -> None:
    y_true = [
        ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "O", "B-LOC"],
        ["B-MISC", "O", "O", "B-PER"],
    ]
    y_pred = [
        ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "O", "O", "B-LOC"],
        ["B-MISC", "O", "B-LOC", "I-PER"],
    ]
    # By hand, with conlleval's chunk rules:
    # gold:      PER(0-1) ORG(3-5) LOC(7) | MISC(0) PER(3)                 -> 5 entities
    # predicted: PER(0-1) ORG(3-4) LOC(7) | MISC(0) LOC(2) PER(3)          -> 6 entities
    #   (I-PER after B-LOC starts a new PER chunk, which matches gold PER(3))
    # correct:   PER(0-1) LOC(7) MISC(0) PER(3)                            -> 4
    # P = 4/6 = 2/3, R = 4/5, F1 = 2PR/(P+R) = (16/15)/(22/15) = 8/11.
    # Per type: PER 2/2 predicted right, 2/2 found; ORG 0/1, 0/1; LOC 1/2 right, 1/1 found
    # (F1 = 2*0.5*1/1.5 = 2/3); MISC 1/1, 1/1.
    report = entity_scores(y_true, y_pred)
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == pytest.approx(4 / 5)
    assert report["f1"] == pytest.approx(8 / 11)
    expected = {
        "LOC": (0.5, 1.0, 2 / 3, 1),
        "MISC": (1.0, 1.0, 1.0, 1),
        "ORG": (0.0, 0.0, 0.0, 1),
        "PER": (1.0, 1.0, 1.0, 2),
    }
    assert set(report["per_entity"]) == set(expected)
    for kind, (p, r, f, support) in expected.items():
        got = report["per_entity"][kind]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f)), kind
        assert got["support"] == support
    assert report["n_true_entities"] == 5 and report["n_pred_entities"] == 6


def test_i_after_o_starts_an_entity_and_no_predictions_score_zero() -> None:
    # conlleval: a chunk may start with I-; so I-PER I-PER equals B-PER I-PER.
    report = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["I-PER", "I-PER", "O", "I-LOC"]])
    assert report["f1"] == pytest.approx(1.0)
    nothing = entity_scores([["B-PER", "O"]], [["O", "O"]])
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)


def test_mismatched_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="sentence 0"):
        entity_scores([["O", "B-PER"]], [["O"]])
    with pytest.raises(ValueError, match="predicted"):
        entity_scores([["O"]], [])
    with pytest.raises(ValueError, match="no sentences"):
        entity_scores([], [])


def test_plot_per_entity_f1_writes_a_png(tmp_path: Path) -> None:
    report = entity_scores([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    path = plot_per_entity_f1(report, tmp_path / "plots" / "f1.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
