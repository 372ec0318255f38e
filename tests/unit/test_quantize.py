"""Dynamic int8 quantization: outputs close to fp32, every Linear quantized, the predictor option."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from plm_core.config import model_preset
from plm_core.finetune.model_init import TOKENIZER_FILES
from plm_core.finetune.quantize import count_quantized_linears, quantize_dynamic_int8, serialized_linear_bytes
from plm_core.models.factory import classification_model
from plm_core.models.io import save_model
from plm_core.serving.classifier import ClassifierPredictor, evaluate_classification
from tests.unit.test_finetune_classification import build_sentiment_task


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("family", ["encoder", "decoder", "seq2seq"])
def test_quantized_outputs_close_to_fp32(family: str) -> None:
    torch.manual_seed(0)
    model = classification_model(model_preset("tiny", family, vocab_size=1000), 3).eval()
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantized = quantize_dynamic_int8(model)
    assert count_quantized_linears(quantized) == linears
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert count_quantized_linears(model) == 0  # the original is left as it was

    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 1000, (16, 20), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, 12:] = 0
    with torch.no_grad():
        ref = model(input_ids, attention_mask=attention_mask)["logits"]
        got = quantized(input_ids, attention_mask=attention_mask)["logits"]
    assert not torch.equal(ref, got)  # it really runs int8 matmuls
    assert (got - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
    assert serialized_linear_bytes(quantized) < serialized_linear_bytes(model)


def test_quantized_predictor_agrees_with_fp32(tmp_path: Path) -> None:
    task = build_sentiment_task(tmp_path / "task")
    torch.manual_seed(0)
    cfg = model_preset("tiny", "encoder", vocab_size=64, max_position=64)
    model = classification_model(cfg, 2)
    with torch.no_grad():  # a random head gives near-uniform probabilities; make them decisive
        model.classifier.weight.mul_(50)
    out = tmp_path / "model"
    save_model(
        model, cfg, out, extra={"task": "classification", "labels": ["negative", "positive"], "max_len": 32}
    )
    (out / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy2(task["tokenizer"] / name, out / "tokenizer" / name)

    fp32, int8 = ClassifierPredictor(out), ClassifierPredictor(out, quantize=True)
    assert int8.quantized and count_quantized_linears(int8.model) > 0
    texts = [
        "the film was very wonderful",
        "awful",
        "this story is quite boring and the cast is some plot",
    ] * 10
    p32, p8 = fp32.predict_proba(texts), int8.predict_proba(texts)
    assert p8.shape == (30, 2)
    assert np.allclose(p8.sum(-1), 1.0, atol=1e-5)
    assert np.abs(p8 - p32).max() < 0.05
    assert (p8.argmax(-1) == p32.argmax(-1)).mean() >= 0.9
    assert [r["label"] for r in int8.predict(texts[:3])][0] in ("negative", "positive")
    # The evaluate entry point takes the option too, and scores what the int8 predictor predicts.
    report = evaluate_classification(out, task["dev"], quantize=True)
    assert report["n"] == 200 and 0.0 <= report["accuracy"] <= 1.0
