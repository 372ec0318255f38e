"""What each task's served model takes and returns, as pandas frames (the MLflow pyfunc contract).

One module for all tasks so the pyfunc definition (``task_pyfunc.py``) and the registry (which needs
an example output to infer the signature) build exactly the same frames. Predictors are passed in,
never imported here, so this module loads even where a task's predictor module does not exist.

| task | input columns | output columns |
|---|---|---|
| classification | ``text`` (+ ``text_pair`` for sentence-pair models) | ``label``, ``probability``, ``probability_<label>`` per label |
| ner | ``text`` | ``entities`` (JSON list of ``{entity, start, end, text, score}``, char offsets) |
| qa | ``question``, ``context`` | ``answer``, ``start`` (char offset, -1 = no answer), ``score`` |
| lm | ``prompt`` | ``generated_text`` (the continuation only) |

NER entities are a JSON string column rather than a nested list: a list-of-structs column has no
stable MLflow schema when a row has no entity, and a string survives every serving format.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from plm_core.serving.classifier import as_texts

TEXT = "text"
TEXT_PAIR = "text_pair"
QUESTION, CONTEXT = "question", "context"
PROMPT = "prompt"
# Inference parameters of the LM pyfunc (MLflow ``params``), with their defaults.
LM_PARAMS: dict[str, Any] = {
    "max_new_tokens": 32,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "num_beams": 1,
    "seed": 0,
}


def _column(model_input: Any, name: str) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if name not in model_input.columns:
            raise ValueError(f"expected a {name!r} column, got columns {list(model_input.columns)}")
        values = model_input[name].tolist()
    else:
        values = as_texts(model_input)
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"every {name!r} must be a string; rows {bad[:5]} are not")
    return values


def classification_frame(predictor: Any, model_input: Any) -> pd.DataFrame:
    """``label`` and its ``probability``, plus one ``probability_<label>`` column per label.
    A sentence-pair model reads its second sentence from a ``text_pair`` column."""
    texts = as_texts(model_input)
    pairs = None
    if isinstance(model_input, pd.DataFrame) and TEXT_PAIR in model_input.columns:
        pairs = _column(model_input, TEXT_PAIR)
    probs = (
        predictor.predict_proba(texts, text_pairs=pairs)
        if pairs is not None
        else predictor.predict_proba(texts)
    )
    best = probs.argmax(axis=-1) if len(texts) else np.zeros(0, dtype=int)
    frame = pd.DataFrame(
        {
            "label": [predictor.labels[i] for i in best],
            "probability": probs[np.arange(len(texts)), best].astype(np.float64),
        }
    )
    for j, name in enumerate(predictor.labels):
        frame[f"probability_{name}"] = probs[:, j].astype(np.float64)
    return frame


def ner_frame(predictor: Any, model_input: Any) -> pd.DataFrame:
    """``entities``: per text a JSON list of entities with character offsets (end exclusive)."""
    results = predictor.predict(_column(model_input, TEXT))
    return pd.DataFrame({"entities": [json.dumps(r, ensure_ascii=False) for r in results]})


def qa_frame(predictor: Any, model_input: Any) -> pd.DataFrame:
    """``answer`` text, its ``start`` character offset in the context (-1: none) and ``score``."""
    if not isinstance(model_input, pd.DataFrame):
        raise ValueError(f"expected a DataFrame with {QUESTION!r} and {CONTEXT!r} columns")
    results = predictor.predict(_column(model_input, QUESTION), _column(model_input, CONTEXT))
    return pd.DataFrame(
        {
            "answer": [str(r["answer"]) for r in results],
            "start": np.array([int(r["start"]) for r in results], dtype=np.int64),
            "score": np.array([float(r["score"]) for r in results], dtype=np.float64),
        }
    )


def lm_frame(predictor: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """``generated_text`` for each ``prompt``; ``params`` override ``LM_PARAMS``."""
    unknown = set(params or {}) - set(LM_PARAMS)
    if unknown:
        raise ValueError(f"unknown generation parameter(s) {sorted(unknown)}; known: {sorted(LM_PARAMS)}")
    options = {**LM_PARAMS, **(params or {})}
    texts = predictor.generate(_column(model_input, PROMPT), **options)
    return pd.DataFrame({"generated_text": texts})


def load_predictor(task: str, model_dir: Any) -> Any:
    """The predictor of a served task; imported here, on use, so a task's module loads only when served."""
    if task == "classification":
        from plm_core.serving.classifier import ClassifierPredictor

        return ClassifierPredictor(model_dir)
    if task == "ner":
        from plm_core.serving.ner import NerPredictor

        return NerPredictor(model_dir)
    if task == "qa":
        from plm_core.serving.qa import QaPredictor

        return QaPredictor(model_dir)
    if task == "lm":
        from plm_core.serving.lm import LmPredictor

        return LmPredictor(model_dir)
    raise ValueError(f"no served predictor for task {task!r}")


def predict_frame(
    task: str, predictor: Any, model_input: Any, params: dict[str, Any] | None = None
) -> pd.DataFrame:
    """The output frame of ``task`` for ``model_input`` (see the table above)."""
    if task == "classification":
        return classification_frame(predictor, model_input)
    if task == "ner":
        return ner_frame(predictor, model_input)
    if task == "qa":
        return qa_frame(predictor, model_input)
    if task == "lm":
        return lm_frame(predictor, model_input, params)
    raise ValueError(f"no output frame for task {task!r}")
