"""The lineage walk on a hand-built tracking store: version -> fine-tune run -> pretrain run ->
tokenizer and data digests; an incomplete registration is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from plm_core.lineage import DatasetRecord, LineageError, lineage, log_datasets, run_datasets
from plm_core.tracking import ensure_experiment


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MlflowClient(uri), ensure_experiment(uri, "lineage", runs_dir=tmp_path)


def test_walks_from_version_to_pretrain_data(store: tuple[MlflowClient, str]) -> None:
    client, exp = store
    shards = [
        DatasetRecord(f"corpus/train/part-0000{i}.parquet", _sha(f"shard{i}"), f"/d/{i}", "corpus_shard")
        for i in range(2)
    ]
    tokenizer = DatasetRecord("tokenizer", _sha("tok"), "/d/tok", "tokenizer", {"files": 2})
    pretrain = client.create_run(exp, run_name="pretrain", tags={"plm.stage": "pretrain"}).info.run_id
    log_datasets(client, pretrain, [*shards, tokenizer])
    log_datasets(client, pretrain, [tokenizer])  # logged twice: still one input
    finetune = client.create_run(
        exp,
        run_name="finetune",
        tags={"plm.stage": "finetune", "plm.pretrain_run_id": pretrain, "plm.code_version": "abc123"},
    ).info.run_id
    task = DatasetRecord("task/dev", _sha("dev"), "/d/dev.jsonl", "task_dev")
    log_datasets(client, finetune, [tokenizer, task])
    client.create_registered_model("m")
    client.create_model_version(
        "m",
        f"runs:/{finetune}/model",
        run_id=finetune,
        tags={
            "plm.registration": "complete",
            "plm.eval_set_digest": _sha("dev"),
            "plm.task_data_digest": "td",
        },
    )

    out = lineage(client, "m", 1)
    assert out["run"]["run_id"] == finetune and out["run"]["stage"] == "finetune"
    assert out["pretrain_run"]["run_id"] == pretrain
    assert out["code_version"] == "abc123"
    # Full sha256 digests come back, although MLflow's digest column holds 36 characters.
    assert out["tokenizer"]["digest"] == _sha("tok") and out["tokenizer"]["source"] == "/d/tok"
    assert [d["digest"] for d in out["data"]["corpus_shards"]] == [_sha("shard0"), _sha("shard1")]
    assert [d["name"] for d in out["data"]["task"]] == ["task/dev"]
    assert out["data"]["eval_set_digest"] == _sha("dev") and out["data"]["task_data_digest"] == "td"
    assert len(run_datasets(client, pretrain)) == 3


def test_lm_version_is_its_own_pretrain_run_and_incomplete_versions_are_refused(store) -> None:
    client, exp = store
    pretrain = client.create_run(exp, tags={"plm.stage": "pretrain"}).info.run_id
    log_datasets(client, pretrain, [DatasetRecord("tokenizer", _sha("t"), "/t", "tokenizer")])
    client.create_registered_model("lm")
    client.create_model_version("lm", f"runs:/{pretrain}/model", run_id=pretrain)
    out = lineage(client, "lm", "1")
    assert out["pretrain_run"]["run_id"] == pretrain == out["run"]["run_id"]
    assert out["tokenizer"]["digest"] == _sha("t")

    client.create_model_version(
        "lm", f"runs:/{pretrain}/model", run_id=pretrain, tags={"plm.registration": "incomplete"}
    )
    with pytest.raises(LineageError, match="lm v2 is an incomplete registration"):
        lineage(client, "lm", "2")


def test_each_task_stage_gets_its_own_task_files() -> None:
    from flows.tracking import _task_records

    records = [
        DatasetRecord(f"task/{k}", _sha(k), k, f"task_{k}") for k in ("train", "dev", "ner_train", "qa_dev")
    ]
    names = lambda stage: [r.name for r in _task_records(records, stage)]  # noqa: E731
    assert names("finetune") == names("evaluate_random_init") == ["task/train", "task/dev"]
    assert names("finetune_ner") == ["task/ner_train"]
    assert names("evaluate_random_init_qa") == ["task/qa_dev"]
