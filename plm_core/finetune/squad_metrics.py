"""SQuAD exact match and F1, exactly as the official evaluation scripts compute them.

The functions below are the official ``evaluate-v1.1.py`` and ``evaluate-v2.0.py`` logic (same
normalisation, same token F1, same max over gold answers, same no-answer threshold search), with
names and type hints of this code base; only the file reading and printing are left out. The
``evaluate`` package would load these metrics from the HF hub at run time, which fails offline,
and the logic is small enough that a copy that can be checked line by line is the safer choice.

Scores are percentages (0-100), as both official scripts report them.

v1.1 vs v2.0 differ in two places that matter: v2.0's F1 is 1 when both gold and prediction are
empty (the right answer to an unanswerable question is the empty string), and v2.0 drops gold
answers that normalise to the empty string. :func:`squad_v1_scores` and :func:`squad_v2_scores`
follow their own script.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official, v1.1 and v2.0)."""

    def remove_articles(text: str) -> str:
        return _ARTICLES.sub(" ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        return "".join(ch for ch in text if ch not in _PUNCTUATION)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


# ---- v1.1 (evaluate-v1.1.py) ----


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of one prediction against one gold answer (v1.1)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(
    metric_fn: Callable[[str, str], float], prediction: str, ground_truths: Sequence[str]
) -> float:
    return max(metric_fn(prediction, ground_truth) for ground_truth in ground_truths)


def squad_v1_scores(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, Any]:
    """``{"exact_match", "f1", "total"}`` over every question in ``gold`` (id -> gold answer texts).

    A question without a prediction scores 0 and still counts in the total, as in the official
    script.
    """
    if not gold:
        raise ValueError("no questions to score")
    f1 = exact_match = 0.0
    for qid, ground_truths in gold.items():
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    total = len(gold)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total, "total": total}


# ---- v2.0 (evaluate-v2.0.py) ----


def get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """v2.0 token F1: when either side is empty (no answer), 1 if both are, else 0."""
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return float(gold_toks == pred_toks)
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def get_raw_scores(
    gold: Mapping[str, Sequence[str]], preds: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, float]]:
    """Per-question exact and F1, max over gold answers; an unanswerable question's gold is ``[""]``."""
    exact_scores: dict[str, int] = {}
    f1_scores: dict[str, float] = {}
    for qid, answers in gold.items():
        gold_answers = [a for a in answers if normalize_answer(a)]
        if not gold_answers:
            gold_answers = [""]
        if qid not in preds:
            continue
        a_pred = preds[qid]
        exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
        f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def apply_no_ans_threshold(
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
    na_prob_thresh: float,
) -> dict[str, float]:
    new_scores: dict[str, float] = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        if pred_na:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def make_eval_dict(
    exact_scores: Mapping[str, float], f1_scores: Mapping[str, float], qid_list: Sequence[str] | None = None
) -> dict[str, float]:
    if not qid_list:
        total = len(exact_scores)
        return {
            "exact": 100.0 * sum(exact_scores.values()) / total,
            "f1": 100.0 * sum(f1_scores.values()) / total,
            "total": total,
        }
    total = len(qid_list)
    return {
        "exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
        "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total,
        "total": total,
    }


def merge_eval(main_eval: dict[str, Any], new_eval: Mapping[str, Any], prefix: str) -> None:
    for k in new_eval:
        main_eval[f"{prefix}_{k}"] = new_eval[k]


def find_best_thresh(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """(best score in %, the ``na_prob`` threshold reaching it): sweep the threshold upwards from
    "every question answered empty"; answering a has-answer question gains its score, answering
    an unanswerable one with text loses its point."""
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score: float = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:  # noqa: SIM108 (kept as in the official script)
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def squad_v2_scores(
    gold: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    answered_predictions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The official v2.0 report: ``exact``, ``f1``, ``total``, ``HasAns_*``, ``NoAns_*`` and, with
    ``na_probs``, ``best_exact``/``best_f1`` and their thresholds.

    ``gold`` maps id -> gold texts (empty for unanswerable). ``predictions`` are the final answers
    ("" = no answer). ``na_probs`` are the no-answer scores; here they are score differences
    ``score_null - best_span`` rather than probabilities, which the official sweep accepts as
    they are (it only orders them). The official script sweeps over the same ``predictions``;
    when those already contain empty answers chosen by a threshold, the sweep cannot look below
    it. ``answered_predictions`` (the best non-empty span of every question) lets the sweep see
    every threshold; without it ``predictions`` are used, as officially.
    """
    if not gold:
        raise ValueError("no questions to score")
    qid_to_has_ans = {qid: bool(answers) for qid, answers in gold.items()}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = get_raw_scores(gold, predictions)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in gold}
    exact_thresh = apply_no_ans_threshold(exact_raw, probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, probs, qid_to_has_ans, na_prob_thresh)
    out_eval: dict[str, Any] = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        merge_eval(out_eval, make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids), "HasAns")
    if no_ans_qids:
        merge_eval(out_eval, make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids), "NoAns")
    if na_probs is not None:
        sweep_preds = answered_predictions if answered_predictions is not None else predictions
        sweep_exact, sweep_f1 = get_raw_scores(gold, sweep_preds)
        best_exact, exact_threshold = find_best_thresh(sweep_preds, sweep_exact, na_probs, qid_to_has_ans)
        best_f1, f1_threshold = find_best_thresh(sweep_preds, sweep_f1, na_probs, qid_to_has_ans)
        out_eval.update(
            best_exact=best_exact,
            best_exact_thresh=exact_threshold,
            best_f1=best_f1,
            best_f1_thresh=f1_threshold,
        )
    return out_eval
