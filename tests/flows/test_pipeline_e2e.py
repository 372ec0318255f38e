"""The whole pipeline on tiny sizes under prefect_test_harness: every stage real, MLflow populated,
the registered model usable from a fresh process, and caching keyed on content, not run ids."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.params import build_params
from flows.pipeline import pipeline
from plm_core.stage import read_manifest
from tests.flows.tiny import tiny_overrides

pytestmark = pytest.mark.e2e


def _manifest_mtimes(summary: dict) -> dict[str, int]:
    return {name: (Path(p) / "manifest.json").stat().st_mtime_ns for name, p in summary["stages"].items()}


@pytest.fixture(scope="module")
def first_run(tiny_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    runs = tmp_path_factory.mktemp("runs")
    params = build_params("tiny", tiny_overrides(tiny_data), runs_dir=str(runs))
    return pipeline(params), runs


def test_every_stage_wrote_a_manifest_with_exact_accounting(first_run: tuple[dict, Path]) -> None:
    summary, _ = first_run
    assert list(summary["stages"]) == [
        "ingest",
        "clean",
        "tokenizer",
        "pack",
        "pretrain",
        "finetune",
        "evaluate",
        "register",
    ]
    ingest = read_manifest(summary["stages"]["ingest"])["counts"]
    clean = read_manifest(summary["stages"]["clean"])["counts"]
    assert ingest["records_out"] == 41
    rejected = sum(clean["rejected"].values())
    assert clean["records_in"] == clean["train"] + clean["validation"] + rejected
    assert clean["rejected"].get("exact_duplicate") == 1


def test_mlflow_holds_pretrain_finetune_and_registered_model(first_run: tuple[dict, Path]) -> None:
    summary, runs = first_run
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    client = MlflowClient(uri)
    pre_id = read_manifest(summary["stages"]["pretrain"])["counts"]["mlflow_run_id"]
    ft_id = read_manifest(summary["stages"]["finetune"])["counts"]["mlflow_run_id"]
    losses = [m.value for m in client.get_metric_history(pre_id, "loss")]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses
    ft_run = client.get_run(ft_id)
    assert 0.0 <= ft_run.data.metrics["eval_accuracy"] <= 1.0
    assert ft_run.data.tags["plm.pretrain_run_id"] == pre_id
    version = client.get_model_version_by_alias("plm-test-classifier", "candidate")
    assert version.run_id == ft_id


def test_registered_model_labels_raw_sentences_in_a_fresh_process(first_run: tuple[dict, Path]) -> None:
    _, runs = first_run
    code = textwrap.dedent(f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri("sqlite:///{runs / "mlflow.db"}")
        m = mlflow.pyfunc.load_model("models:/plm-test-classifier@candidate")
        out = m.predict(pd.DataFrame({{"text": ["a wonderful film", "a dull mess"]}}))
        assert list(out["label"].map(type).unique()) == [str], out
        assert ((out["probability"] >= 0.5) & (out["probability"] <= 1)).all(), out
        print(out.to_json())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_second_run_reuses_every_stage(first_run: tuple[dict, Path], tiny_data, caplog) -> None:
    summary, runs = first_run
    before = _manifest_mtimes(summary)
    caplog.set_level(logging.INFO)
    again = pipeline(build_params("tiny", tiny_overrides(tiny_data), runs_dir=str(runs)))
    assert again["stages"] == summary["stages"]
    assert _manifest_mtimes(again) == before
    assert caplog.text.count("reused cached output") >= 8


def test_changing_a_finetune_parameter_reruns_only_finetune_and_after(first_run, tiny_data) -> None:
    summary, runs = first_run
    before = _manifest_mtimes(summary)
    changed = pipeline(
        build_params("tiny", [*tiny_overrides(tiny_data), "finetune.lr=0.002"], runs_dir=str(runs))
    )
    after = _manifest_mtimes(changed)
    for stage in ("ingest", "clean", "tokenizer", "pack", "pretrain"):
        assert changed["stages"][stage] == summary["stages"][stage]
        assert after[stage] == before[stage], stage
    for stage in ("finetune", "evaluate", "register"):
        assert changed["stages"][stage] != summary["stages"][stage], stage


@pytest.mark.parametrize(("family", "arch"), [("decoder", ""), ("seq2seq", ""), ("seq2seq", "bart")])
def test_every_family_runs_end_to_end(first_run, tiny_data, family: str, arch: str) -> None:
    """`plm run --family ...`: the data stages come from the cache, the family's objective
    pretrains, and its classifier is fine-tuned, evaluated and registered."""
    summary, runs = first_run
    params = build_params(
        "tiny",
        # BART's denoising adds <s> and </s> around each row and may insert masks: room for them.
        [*tiny_overrides(tiny_data), "registry.model_name=plm-test-" + (arch or family)]
        + (["model.max_position=96"] if arch == "bart" else []),
        family=family,
        arch=arch,
        runs_dir=str(runs),
    )
    result = pipeline(params)
    for stage in ("ingest", "clean", "tokenizer", "pack"):
        assert result["stages"][stage] == summary["stages"][stage]
    pre = read_manifest(result["stages"]["pretrain"])
    assert pre["params"]["model"]["family"] == family
    assert pre["params"]["pretrain"]["objective"] == params.pretrain.objective
    assert pre["counts"]["final_loss"] < pre["counts"]["first_loss"]
    assert 0.0 <= result["headline"]["dev_accuracy"] <= 1.0
    assert "candidate" in result["headline"]["aliases"]
