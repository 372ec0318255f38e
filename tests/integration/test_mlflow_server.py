"""MLflow as the system of record, against a real ``mlflow server`` on loopback (sqlite backend,
artifacts proxied by the server): the tiny pipeline runs through ``MLFLOW_TRACKING_URI``; its runs
nest under one parent with datasets, plots and the HF export logged; each task's champion loads
and predicts in a fresh process; ``mlflow models serve`` answers ``/invocations``; and the lineage
walk goes from a registered version back to the pretrain run, the tokenizer and the data digests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from plm_core.lineage import lineage
from plm_core.stage import read_manifest
from tests.integration.mlflow_stack import CLASSIFIER, LM, NER, QA, child_env, invoke

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SENTENCES = ["a gripping , beautiful film", "dull , lifeless and far too long", "the acting was fine"]
PROMPTS = ["To be, or not to be", "The king"]
NER_TEXTS = [
    "Peter Blackburn flew from London to Berlin .",
    "EU rejects German call to boycott British lamb .",
]
QUESTIONS = ["Where did Peter fly to?"]
CONTEXTS = ["Peter Blackburn flew from London to Berlin on Monday."]


def _run_id(summary: dict[str, Any], stage: str) -> str:
    return read_manifest(summary["stages"][stage])["counts"]["mlflow_run_id"]


def test_pipeline_logged_nested_runs_datasets_plots_and_models(pipeline_on_server: dict[str, Any]) -> None:
    summary, uri = pipeline_on_server["summary"], pipeline_on_server["uri"]
    print(f"tiny pipeline against the server: {pipeline_on_server['seconds']:.0f} s")
    client = MlflowClient(uri)
    pretrain, finetune = _run_id(summary, "pretrain"), _run_id(summary, "finetune")
    parent = client.get_run(pretrain).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["plm.stage"] == "pipeline"
    nested = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    stages = {r.data.tags["plm.stage"] for r in nested}
    assert {"ingest", "clean", "tokenizer", "pack", "pretrain", "finetune", "evaluate", "register"} <= stages
    assert all(r.info.status == "FINISHED" for r in nested)

    inputs = {d.dataset.name: d for d in client.get_run(pretrain).inputs.dataset_inputs}
    assert "tokenizer" in inputs and "packed_tokens" in inputs
    assert any(n.startswith("corpus/train/") for n in inputs) and any(
        n.startswith("corpus/validation/") for n in inputs
    )
    ft_inputs = {d.dataset.name for d in client.get_run(finetune).inputs.dataset_inputs}
    assert {"tokenizer", "task/train", "task/dev", "pretrained_weights"} <= ft_inputs

    pre_files = {f.path for f in client.list_artifacts(pretrain)}
    assert "loss_curve.png" in pre_files
    ft_files = {f.path for f in client.list_artifacts(finetune, "plots")}
    assert {"plots/confusion_matrix.png", "plots/finetune_curve.png"} <= ft_files
    hf = {f.path for f in client.list_artifacts(finetune, "hf")}
    assert {"hf/config.json", "hf/model.safetensors"} <= hf
    lm_hf = {f.path for f in client.list_artifacts(pretrain, "hf")}
    assert "hf/model.safetensors" in lm_hf  # the decoder maps whole onto GPT2LMHeadModel

    for name in (CLASSIFIER, LM):
        champion = client.get_model_version_by_alias(name, "champion")
        candidate = client.get_model_version_by_alias(name, "candidate")
        assert champion.version == candidate.version == "1"
        assert champion.tags["plm.registration"] == "complete"
        assert champion.tags["plm.gate_decision"] == "no champion yet"


def _fresh_process(code: str, uri: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=child_env(uri, cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _expected(summary: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """What the models should answer, computed in this process from the stage directories."""
    import shutil

    from plm_core.serving.classifier import ClassifierPredictor
    from plm_core.serving.lm import LmPredictor
    from plm_core.serving.ner import NerPredictor
    from plm_core.serving.qa import QaPredictor

    probs = ClassifierPredictor(summary["stages"]["finetune"]).predict_proba(SENTENCES)
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(Path(summary["stages"]["pretrain"]) / name, lm_dir / name)
    shutil.copytree(summary["stages"]["tokenizer"], lm_dir / "tokenizer")
    texts = LmPredictor(lm_dir).generate(PROMPTS, max_new_tokens=12)
    entities = NerPredictor(summary["stages"]["finetune_ner"]).predict(NER_TEXTS)
    answers = QaPredictor(summary["stages"]["finetune_qa"]).predict(QUESTIONS, CONTEXTS)
    return {"probs": probs, "generated": texts, "entities": entities, "answers": answers}


def test_each_champion_loads_and_predicts_in_a_fresh_process(
    pipeline_on_server: dict[str, Any], tmp_path: Path
) -> None:
    summary, uri = pipeline_on_server["summary"], pipeline_on_server["uri"]
    out = _fresh_process(
        f"""
        import json, mlflow, pandas as pd
        clf = mlflow.pyfunc.load_model("models:/{CLASSIFIER}@champion")
        c = clf.predict(pd.DataFrame({{"text": {SENTENCES!r}}}))
        lm = mlflow.pyfunc.load_model("models:/{LM}@champion")
        g = lm.predict(pd.DataFrame({{"prompt": {PROMPTS!r}}}), params={{"max_new_tokens": 12}})
        ner = mlflow.pyfunc.load_model("models:/{NER}@champion").predict(pd.DataFrame({{"text": {NER_TEXTS!r}}}))
        qa = mlflow.pyfunc.load_model("models:/{QA}@champion").predict(
            pd.DataFrame({{"question": {QUESTIONS!r}, "context": {CONTEXTS!r}}}))
        print(json.dumps({{"columns": list(c.columns), "clf": c.to_dict("list"), "lm": g.to_dict("list"),
                           "lm_columns": list(g.columns), "ner": ner["entities"].tolist(),
                           "qa": qa.to_dict("records")}}))
        """,
        uri,
        tmp_path,
    )
    expected = _expected(summary, tmp_path)
    labels = ["negative", "positive"]
    assert out["columns"] == ["label", "probability", "probability_negative", "probability_positive"]
    for i, row in enumerate(expected["probs"]):
        assert out["clf"]["label"][i] == labels[int(row.argmax())]
        assert out["clf"]["probability_negative"][i] == pytest.approx(float(row[0]), abs=1e-5)
        assert out["clf"]["probability_positive"][i] == pytest.approx(float(row[1]), abs=1e-5)
        assert out["clf"]["probability"][i] == pytest.approx(float(row.max()), abs=1e-5)
    assert out["lm_columns"] == ["generated_text"]
    assert out["lm"]["generated_text"] == expected["generated"]  # greedy: the same text
    assert all(isinstance(t, str) for t in out["lm"]["generated_text"])
    assert any(t.strip() for t in out["lm"]["generated_text"])
    served_entities = [json.loads(e) for e in out["ner"]]
    spans = [[(e["entity"], e["start"], e["end"], e["text"]) for e in row] for row in expected["entities"]]
    assert [[(e["entity"], e["start"], e["end"], e["text"]) for e in row] for row in served_entities] == spans
    for served_row, row in zip(served_entities, expected["entities"], strict=True):
        assert [e["score"] for e in served_row] == pytest.approx([e["score"] for e in row], abs=1e-5)
    for text, entities in zip(NER_TEXTS, expected["entities"], strict=True):
        assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)
    (served_qa,), (answer,) = out["qa"], expected["answers"]
    assert served_qa["answer"] == answer["answer"] and served_qa["start"] == answer["start"]
    assert served_qa["score"] == pytest.approx(answer["score"], abs=1e-5)


def test_served_champion_answers_invocations(served_classifier: dict[str, Any], tmp_path: Path) -> None:
    answer = invoke(served_classifier["url"], [{"text": s} for s in SENTENCES])
    rows = answer["predictions"]
    expected = _expected(served_classifier["summary"], tmp_path)["probs"]
    assert len(rows) == len(SENTENCES)
    for row, probs in zip(rows, expected, strict=True):
        assert row["label"] == ["negative", "positive"][int(probs.argmax())]
        assert row["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert row["probability_negative"] + row["probability_positive"] == pytest.approx(1.0, abs=1e-5)


def test_lineage_walks_from_registered_versions_to_pretraining_data(
    pipeline_on_server: dict[str, Any],
) -> None:
    summary, uri = pipeline_on_server["summary"], pipeline_on_server["uri"]
    client = MlflowClient(uri)
    clean = read_manifest(summary["stages"]["clean"])
    shard_digests = {
        f"corpus/{rel}": sha
        for rel, sha in clean["files"].items()
        if rel.endswith(".parquet") and rel.split("/")[0] in ("train", "validation")
    }
    tokenizer_digest = read_manifest(summary["stages"]["tokenizer"])["digest"]

    out = lineage(client, CLASSIFIER, 1)
    assert out["run"]["run_id"] == _run_id(summary, "finetune")
    assert out["pretrain_run"]["run_id"] == _run_id(summary, "pretrain")
    assert out["pretrain_run"]["stage"] == "pretrain"
    assert (
        out["pipeline_run_id"] == client.get_run(_run_id(summary, "pretrain")).data.tags["mlflow.parentRunId"]
    )
    assert out["tokenizer"]["digest"] == tokenizer_digest
    assert {d["name"]: d["digest"] for d in out["data"]["corpus_shards"]} == shard_digests
    assert out["data"]["packed_tokens"][0]["digest"] == read_manifest(summary["stages"]["pack"])["digest"]
    ev = read_manifest(summary["stages"]["evaluate"])
    assert out["data"]["eval_set_digest"] == ev["inputs"]["data"]
    assert (
        out["model"]["tags"]["plm.task_data_digest"]
        == read_manifest(summary["stages"]["finetune"])["inputs"]["task_data"]
    )
    assert {d["name"] for d in out["data"]["task"]} == {"task/train", "task/dev"}
    # The git sha at registration (other commits may land while the test runs): the register
    # stage's manifest records the same checkout.
    assert out["code_version"] == read_manifest(summary["stages"]["register"])["code_version"] != "unknown"
    assert out["model"]["tags"]["plm.pretrain_run_id"] == _run_id(summary, "pretrain")
    assert out["model"]["tags"]["plm.tokenizer_digest"] == tokenizer_digest

    lm = lineage(client, LM, 1)
    assert lm["run"]["run_id"] == lm["pretrain_run"]["run_id"] == _run_id(summary, "pretrain")
    assert lm["tokenizer"]["digest"] == tokenizer_digest
    assert lm["data"]["eval_set_digest"] == read_manifest(summary["stages"]["pack"])["digest"]
