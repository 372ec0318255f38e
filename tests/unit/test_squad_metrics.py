"""SQuAD EM/F1: the official normalisation and scoring, checked against values derived by hand."""

from __future__ import annotations

import pytest

from plm_core.finetune.squad_metrics import (
    compute_f1,
    exact_match_score,
    f1_score,
    find_best_thresh,
    normalize_answer,
    squad_v1_scores,
    squad_v2_scores,
)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  Levi's   Stadium. ", "levis stadium"),
        ("an apple, a pear and the plum", "apple pear and plum"),
        ("Theatre and banana", "theatre and banana"),  # articles only as whole words
        ("24–10", "24–10"),  # the en dash is not ASCII punctuation, as in the official script
        ("A", ""),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_exact_and_f1_known_values() -> None:
    assert exact_match_score("the Denver Broncos", "Denver Broncos")
    assert not exact_match_score("Denver", "Denver Broncos")
    # pred {broncos, won} vs gold {denver, broncos}: 1 common, P = R = 1/2 -> F1 = 1/2
    assert f1_score("Broncos won", "Denver Broncos") == 0.5
    # P = 1, R = 1/2 -> F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert f1_score("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred {the x, x} -> {x, x}, gold {x}: P = 1/2, R = 1
    assert f1_score("x x", "x") == pytest.approx(2 / 3)
    assert f1_score("the", "Denver") == 0.0  # nothing left after normalisation on one side


def test_squad_v1_scores_fixed_example() -> None:
    gold = {
        "q1": ["Denver Broncos", "The Broncos"],
        "q2": ["Denver Broncos"],
        "q3": ["Carolina Panthers", "Panthers"],
        "q4": ["February 7, 2016"],
    }
    predictions = {"q1": "the Denver Broncos", "q2": "Broncos won", "q3": "Carolina"}  # q4 unanswered
    scores = squad_v1_scores(gold, predictions)
    # EM: only q1 -> 1/4. F1: q1 1, q2 1/2, q3 max(2/3, 0) = 2/3, q4 0 -> (13/6) / 4.
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 2 / 3) / 4)
    assert scores["total"] == 4


def test_v2_empty_answers() -> None:
    assert compute_f1("", "") == 1.0
    assert compute_f1("", "Broncos") == 0.0
    assert compute_f1("Broncos", "") == 0.0


def test_squad_v2_scores_fixed_example() -> None:
    gold = {"q1": ["Denver Broncos"], "q2": [], "q3": []}
    predictions = {"q1": "Denver Broncos", "q2": "", "q3": "Panthers"}
    scores = squad_v2_scores(gold, predictions)
    assert scores["exact"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(200 / 3)
    assert (scores["HasAns_exact"], scores["HasAns_total"]) == (100.0, 1)
    assert (scores["NoAns_exact"], scores["NoAns_total"]) == (50.0, 2)
    assert "best_f1" not in scores  # no na_probs, no sweep


def test_squad_v2_threshold_and_best_sweep() -> None:
    gold = {"q1": ["Denver Broncos"], "q2": [], "q3": []}
    answered = {"q1": "Denver Broncos", "q2": "Broncos", "q3": "Panthers"}
    na = {"q1": -2.0, "q2": 3.0, "q3": 1.0}
    # threshold 2.0: only q2 (3.0 > 2.0) becomes "no answer": q1 right, q2 right, q3 wrong
    scores = squad_v2_scores(gold, answered, na, na_prob_thresh=2.0, answered_predictions=answered)
    assert scores["exact"] == pytest.approx(200 / 3)
    assert scores["NoAns_exact"] == 50.0
    # Sweep by hand: all empty = 2 right (q2, q3); answering q1 (na -2) -> 3; then q3 (1.0) -> 2,
    # q2 (3.0) -> 1. Best 3/3 at threshold -2.0.
    assert scores["best_exact"] == 100.0 and scores["best_exact_thresh"] == -2.0
    assert scores["best_f1"] == 100.0 and scores["best_f1_thresh"] == -2.0
    # The official sweep over thresholded predictions (q2 and q3 already "") cannot see below them.
    official = {"q1": "Denver Broncos", "q2": "", "q3": ""}
    best, thresh = find_best_thresh(
        official, {"q1": 1, "q2": 1, "q3": 1}, na, {"q1": True, "q2": False, "q3": False}
    )
    assert (best, thresh) == (100.0, -2.0)


def test_empty_gold_is_an_error() -> None:
    with pytest.raises(ValueError):
        squad_v1_scores({}, {})
