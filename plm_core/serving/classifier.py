"""Inference for a fine-tuned sequence classifier directory (the finetune stage's output).

The directory is self-contained (config.json, model.safetensors, tokenizer/), so this module is
all that MLflow's pyfunc wrapper, the evaluate stage and fine-tuning's dev evaluation need. It
imports nothing for training, which keeps the served model's requirements to torch,
sentencepiece, safetensors, numpy and pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from plm_core.errors import InputError
from plm_core.finetune.metrics import classification_report
from plm_core.finetune.quantize import quantize_dynamic_int8
from plm_core.finetune.task_data import (
    encode_inputs,
    length_sorted_batches,
    load_classification,
    model_inputs,
)
from plm_core.finetune.text2text import (
    HEAD_KEY,
    HEADS,
    TEXT_HEAD,
    label_scores,
    label_targets,
    text2text_model,
)
from plm_core.models.factory import classification_model
from plm_core.models.io import load_config, load_weights
from plm_core.tokenizer import Tokenizer

TEXT_COLUMN = "text"


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    sequences: list[list[int]],
    pad_id: int,
    batch_size: int,
    segments: list[list[int]] | None = None,
) -> torch.Tensor:
    """Logits (N, num_labels) in input order; batches are length-sorted so padding is minimal.
    ``segments`` are the token type ids of sentence pairs (None for single sentences)."""
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size):
        batch_segments = None if segments is None else [segments[i] for i in idx]
        inputs = model_inputs([sequences[i] for i in idx], pad_id, batch_segments)
        device = next(model.parameters(), torch.empty(0)).device
        logits = model(**{k: v.to(device) for k, v in inputs.items()})["logits"].float().cpu()
        if out is None:
            out = torch.empty((len(sequences), logits.shape[-1]), dtype=torch.float32)
        out[idx] = logits
    model.train(was_training)
    if out is None:
        raise ValueError("no sequences to score")
    return out


class ClassifierPredictor:
    """Loads a classifier directory once; ``predict`` labels raw texts (or text pairs).

    ``quantize=True`` serves the model with int8 dynamic quantized Linear layers on CPU
    (``plm_core.finetune.quantize``); the directory holds fp32 weights either way. A directory
    whose config.json says ``classification_head: "text"`` holds a T5-style text-to-text model
    (``plm_core.finetune.text2text``): its probabilities are the softmax over each label's summed
    target log-likelihood.
    """

    def __init__(self, model_dir: str | Path, quantize: bool = False) -> None:
        self.model_dir = Path(model_dir)
        cfg, extra = load_config(self.model_dir)
        if extra.get("task") != "classification":
            raise InputError(
                self.model_dir / "config.json", f"task is {extra.get('task')!r}, expected 'classification'"
            )
        self.labels: list[str] = list(extra["labels"])
        self.max_len = int(extra["max_len"])
        self.tokenizer = Tokenizer.load(self.model_dir / "tokenizer")
        self.head = str(extra.get(HEAD_KEY, "pooled"))
        if self.head not in HEADS:
            raise InputError(
                self.model_dir / "config.json", f"{HEAD_KEY} {self.head!r}; expected one of {list(HEADS)}"
            )
        self.label_targets: list[list[int]] | None = None
        if self.head == TEXT_HEAD:
            stored = extra.get("label_targets")
            targets = label_targets(self.tokenizer, self.labels)
            if stored is not None and [list(t) for t in stored] != targets:
                raise InputError(
                    self.model_dir / "config.json",
                    "label_targets differ from the bundled tokenizer's encoding of the labels",
                )
            self.label_targets = targets
            self.model = text2text_model(cfg)
        else:
            self.model = classification_model(cfg, len(self.labels))
        load_weights(self.model, self.model_dir)
        self.model.eval()
        self.quantized = quantize
        if quantize:
            self.model = quantize_dynamic_int8(self.model, inplace=True)
        self.text_pair_field: str = str(extra.get("finetune", {}).get("text_pair_field", "") or "")

    def predict_proba(
        self, texts: Sequence[str], batch_size: int = 64, text_pairs: Sequence[str] | None = None
    ) -> np.ndarray:
        """Class probabilities (N, num_labels), rows in input order; ``text_pairs`` for a model
        fine-tuned on sentence pairs."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        pairs = None if text_pairs is None else list(text_pairs)
        sequences, segments = encode_inputs(self.tokenizer, list(texts), self.max_len, pairs)
        if self.label_targets is not None:
            scores = label_scores(
                self.model, sequences, self.label_targets, self.tokenizer.pad_id, batch_size
            )
            return torch.softmax(scores, dim=-1).numpy()
        logits = predict_logits(self.model, sequences, self.tokenizer.pad_id, batch_size, segments)
        return torch.softmax(logits, dim=-1).numpy()

    def predict(
        self, texts: Sequence[str], batch_size: int = 64, text_pairs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        probs = self.predict_proba(texts, batch_size, text_pairs)
        results = []
        for row in probs:
            best = int(row.argmax())
            results.append(
                {
                    "label": self.labels[best],
                    "label_id": best,
                    "probability": float(row[best]),
                    "probabilities": {name: float(p) for name, p in zip(self.labels, row, strict=True)},
                }
            )
        return results


def as_texts(model_input: Any) -> list[str]:
    """Texts from what MLflow callers send: a DataFrame with a ``text`` column, a Series, a list."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise ValueError(f"expected a {TEXT_COLUMN!r} column, got columns {list(model_input.columns)}")
        values = model_input[TEXT_COLUMN].tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        values = list(model_input)
    else:
        raise ValueError(f"expected a DataFrame, Series or list of strings, got {type(model_input).__name__}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"every input must be a string; rows {bad[:5]} are not")
    return values


def predictions_frame(predictor: ClassifierPredictor, model_input: Any) -> pd.DataFrame:
    """The served output: one row per input with the predicted ``label`` and its ``probability``."""
    results = predictor.predict(as_texts(model_input))
    return pd.DataFrame(
        {
            "label": [r["label"] for r in results],
            "probability": np.array([r["probability"] for r in results], dtype=np.float64),
        }
    )


def evaluate_classification(
    model_dir: str | Path,
    data_path: str | Path,
    text_field: str = "sentence",
    label_field: str = "label",
    text_pair_field: str | None = None,
    quantize: bool = False,
) -> dict[str, Any]:
    """Score a classifier directory on a labelled file (labels read with the model's label names).
    ``text_pair_field`` None = the one the model was fine-tuned with (sentence-pair models)."""
    predictor = ClassifierPredictor(model_dir, quantize=quantize)
    pair_field = predictor.text_pair_field if text_pair_field is None else text_pair_field
    data = load_classification(
        data_path, text_field, label_field, labels=predictor.labels, text_pair_field=pair_field
    )
    predicted = predictor.predict_proba(data.texts, text_pairs=data.text_pairs).argmax(axis=-1)
    return classification_report(data.label_ids, predicted.tolist(), predictor.labels)
