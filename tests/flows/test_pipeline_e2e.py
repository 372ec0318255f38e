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
from tests.flows.tiny import tiny_overrides, tiny_task_overrides

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


def test_ner_and_qa_from_pretrained_and_random_init(first_run, tiny_data) -> None:
    """`plm run --tasks ner,qa --compare-random-init`: the pretrained checkpoint is reused, each task
    is fine-tuned twice (pretrained, random init), evaluated on its own eval set and registered."""
    summary, runs = first_run
    params = build_params(
        "tiny",
        [*tiny_overrides(tiny_data), *tiny_task_overrides(tiny_data, "plm-test-ner", "plm-test-qa")],
        runs_dir=str(runs),
        tasks=["ner", "qa"],
    )
    result = pipeline(params, compare_random_init=True)
    for stage in ("ingest", "clean", "tokenizer", "pack", "pretrain"):
        assert result["stages"][stage] == summary["stages"][stage]
    for task in ("ner", "qa"):
        for prefix in ("finetune", "evaluate", "register", "finetune_random_init", "evaluate_random_init"):
            assert f"{prefix}_{task}" in result["stages"], (prefix, task)
        pretrained = read_manifest(result["stages"][f"finetune_{task}"])
        scratch = read_manifest(result["stages"][f"finetune_random_init_{task}"])
        assert pretrained["inputs"]["pretrain"] == read_manifest(summary["stages"]["pretrain"])["digest"]
        assert "pretrain" not in scratch["inputs"]
        report = read_manifest(result["stages"][f"evaluate_{task}"])["counts"]
        assert report["task"] == task and report["headline"] == "f1"
    ner_eval = read_manifest(result["stages"]["evaluate_ner"])
    assert ner_eval["params"]["data_path"] == str(tiny_data["conll_test"].resolve())
    head = result["headline"]
    for key in ("ner_f1", "ner_f1_random_init", "qa_f1", "qa_exact_match", "qa_f1_random_init"):
        assert 0.0 <= head[key] <= 100.0, (key, head)
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    for name in ("plm-test-ner", "plm-test-qa"):
        assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"


def test_plm_eval_scores_a_directory_and_a_registered_model(first_run, tiny_data) -> None:
    """`plm eval` on the fine-tune stage directory and on `models:/...@candidate` gives the same
    report as the pipeline's evaluate stage, with the headline metric printed last."""
    from typer.testing import CliRunner

    from flows.cli import app

    summary, runs = first_run
    expected = read_manifest(summary["stages"]["evaluate"])["counts"]["accuracy"]
    for model in (summary["stages"]["finetune"], "models:/plm-test-classifier@candidate"):
        args = ["eval", "--model", model, "--data", str(tiny_data["dev"]), "--runs-dir", str(runs), "--force"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines()[-1] == f"accuracy: {expected:.4f}"
    args = [
        "eval",
        "--model",
        summary["stages"]["finetune"],
        "--data",
        str(tiny_data["dev"]),
        "--task",
        "ner",
    ]
    wrong = CliRunner().invoke(app, [*args, "--runs-dir", str(runs)])
    assert wrong.exit_code == 2
    assert "was fine-tuned for classification" in wrong.output.strip().splitlines()[-1]
