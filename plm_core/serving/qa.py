"""Inference for a fine-tuned extractive-QA directory (``finetune_qa``'s output).

Like the classifier, the directory is self-contained: config.json holds the window and decoding
settings the model was trained with (``max_len``, ``doc_stride``, ``max_query_len``,
``max_answer_length``, ``n_best``, ``null_threshold``, ``squad_version``), so serving, evaluation
and fine-tuning's dev scoring window and decode in exactly one way. Nothing here imports the
training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plm_core.errors import InputError
from plm_core.finetune.squad import (
    DecodeConfig,
    Features,
    SpanPrediction,
    WindowConfig,
    build_features,
    decode_features,
)
from plm_core.finetune.task_data import length_sorted_batches
from plm_core.models.io import load_config, load_weights
from plm_core.models.tasks import ForQuestionAnswering
from plm_core.tokenizer import Tokenizer


def pad_features(
    feats: Features, idx: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids, attention_mask, token_type_ids`` (B, T) of windows ``idx``, padded to the longest."""
    width = max(len(feats.input_ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(feats.input_ids[i])
        input_ids[row, :n] = torch.tensor(feats.input_ids[i], dtype=torch.long)
        token_type_ids[row, :n] = torch.tensor(feats.token_type_ids[i], dtype=torch.long)
        attention_mask[row, :n] = 1
    return input_ids, attention_mask, token_type_ids


@torch.inference_mode()
def window_logits(
    model: torch.nn.Module, feats: Features, pad_id: int, batch_size: int = 64
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start and end logits of every window (unpadded, float32, in window order)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    starts: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(feats)
    ends: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(feats)
    for idx in length_sorted_batches([len(s) for s in feats.input_ids], batch_size):
        input_ids, attention_mask, token_type_ids = (t.to(device) for t in pad_features(feats, idx, pad_id))
        out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        s, e = out["start_logits"].float().cpu().numpy(), out["end_logits"].float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(feats.input_ids[i])
            starts[i], ends[i] = s[row, :n], e[row, :n]
    model.train(was_training)
    return starts, ends


def predict_spans(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    window: WindowConfig,
    decode: DecodeConfig,
    batch_size: int = 64,
) -> list[SpanPrediction]:
    """One decoded answer per (question, context) pair."""
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    if not questions:
        return []
    feats = build_features(tokenizer, questions, contexts, window)
    starts, ends = window_logits(model, feats, tokenizer.pad_id, batch_size)
    return decode_features(contexts, feats, starts, ends, decode)


def settings_from_config(extra: dict[str, Any]) -> tuple[WindowConfig, DecodeConfig]:
    """The window and decoding settings stored in a QA model's config.json."""
    window = WindowConfig(
        max_len=int(extra["max_len"]),
        doc_stride=int(extra["doc_stride"]),
        max_query_len=int(extra["max_query_len"]),
    )
    decode = DecodeConfig(
        max_answer_length=int(extra["max_answer_length"]),
        n_best=int(extra["n_best"]),
        allow_null=extra["squad_version"] == "2.0",
        null_threshold=float(extra["null_threshold"]),
    )
    return window, decode


class QaPredictor:
    """Loads a QA directory once; ``predict`` answers questions about contexts (CPU by default)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        cfg, extra = load_config(self.model_dir)
        if extra.get("task") != "qa":
            raise InputError(self.model_dir / "config.json", f"task is {extra.get('task')!r}, expected 'qa'")
        self.extra = extra
        self.window, self.decode = settings_from_config(extra)
        self.tokenizer = Tokenizer.load(self.model_dir / "tokenizer")
        self.model = ForQuestionAnswering(cfg)
        load_weights(self.model, self.model_dir)
        self.model.to(device).eval()

    def predict_spans(
        self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 64
    ) -> list[SpanPrediction]:
        return predict_spans(
            self.model, self.tokenizer, questions, contexts, self.window, self.decode, batch_size
        )

    def predict(
        self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 64
    ) -> list[dict[str, Any]]:
        """``[{"answer", "start", "score"}]``: ``start`` is a character offset into the context
        (-1 with ``answer`` "" when the model says there is no answer, v2 models only);
        ``score`` is the answer's probability among the n-best candidates."""
        bad = [i for i, v in enumerate([*questions, *contexts]) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"questions and contexts must be strings; items {bad[:5]} are not")
        return [
            {"answer": p.text, "start": p.start, "score": p.score}
            for p in self.predict_spans(questions, contexts, batch_size)
        ]
