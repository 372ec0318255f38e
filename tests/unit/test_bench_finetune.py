"""bench/finetune_compression.py end to end on the synthetic sentiment task, so the script keeps working."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from plm_core.config import ModelConfig
from plm_core.models.encoder import BertForMaskedLM
from plm_core.models.io import save_model
from tests.conftest import REPO
from tests.unit.test_finetune_classification import build_sentiment_task


def _bench_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(
        "finetune_compression", REPO / "bench" / "finetune_compression.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_part_and_writes_a_summary(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    task = build_sentiment_task(tmp_path / "task")
    cfg = ModelConfig(
        vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=64
    )
    torch.manual_seed(0)
    save_model(BertForMaskedLM(cfg), cfg, tmp_path / "pretrained", extra={"task": "mlm"})
    out = tmp_path / "bench"
    args = [
        "--pretrained", str(tmp_path / "pretrained"), "--tokenizer", str(task["tokenizer"]),
        "--train", str(task["train"]), "--dev", str(task["dev"]), "--out", str(out),
        "--max-train-examples", "200", "--epochs", "1", "--speed-presets", "--repeats", "1",
    ]  # fmt: skip
    previous = torch.get_num_threads()
    try:
        assert _bench_module().main(args) == 0
    finally:
        torch.set_num_threads(previous)
    summary = json.loads((out / "summary.json").read_text())
    assert {"full", "lora", "adapter", "distill_L1_H0_a0.5", "quant"} <= set(summary)
    assert summary["lora"]["trainable_fraction"] < summary["full"]["trainable_fraction"] == 1.0
    distill = summary["distill_L1_H0_a0.5"]
    assert distill["student_parameters"] < distill["teacher_parameters"]
    assert distill["teacher_dev_accuracy"] == summary["full"]["dev_accuracy"]
    quant = summary["quant"]
    assert abs(quant["accuracy_int8"] - quant["accuracy_fp32"]) < 0.1
    assert quant["speed"]["finetuned_tiny"]["speedup"] > 0
    printed = capsys.readouterr().out
    assert "== summary ==" in printed and "int8 is" in printed
