"""MLflow registration on an embedded sqlite store: aliases, the champion gate, loading from scratch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from plm_core.errors import ConfigError
from plm_core.finetune.classification import finetune_classification
from plm_core.registry import log_and_register, log_and_register_classifier
from plm_core.tracking import ensure_experiment, tracking_uri
from tests.unit.test_finetune_classification import TINY_MODEL, build_sentiment_task, tiny_finetune_config

pytestmark = pytest.mark.integration

MODEL_NAME = "sst2-test-classifier"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    task = build_sentiment_task(root / "task")
    cfg = tiny_finetune_config(task, epochs=1, max_train_examples=200)
    finetune_classification(task["tokenizer"], None, TINY_MODEL, cfg, root / "model")
    return root / "model"


def test_gate_metric_must_be_evaluated(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="gate metric 'accuracy'"):
        log_and_register_classifier(
            model_dir,
            tracking_uri="sqlite://",
            experiment_id="0",
            model_name=MODEL_NAME,
            eval_metrics={"f1": 0.5},
        )


def test_register_gate_and_load_champion_in_fresh_process(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    experiment_id = ensure_experiment(uri, "registry-test", runs_dir=tmp_path)
    client = MlflowClient(uri)

    def register(accuracy: float, **kwargs: object) -> dict:
        return log_and_register_classifier(
            model_dir,
            tracking_uri=uri,
            experiment_id=experiment_id,
            model_name=MODEL_NAME,
            eval_metrics={"accuracy": accuracy, "macro_f1": accuracy - 0.01},
            **kwargs,
        )

    first = register(0.80, tags={"preset": "tiny"})
    assert first["version"] == "1" and first["promoted"]
    assert first["aliases"] == ["candidate", "champion"]
    assert first["model_uri"] == f"models:/{MODEL_NAME}/1"

    existing_run = client.create_run(experiment_id).info.run_id
    second = register(0.85, run_id=existing_run)
    assert second["run_id"] == existing_run
    assert second["version"] == "2" and second["promoted"]

    third = register(0.70)
    assert third["version"] == "3" and not third["promoted"]
    assert third["aliases"] == ["candidate"]

    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "candidate").version) == "3"
    v1 = client.get_model_version(MODEL_NAME, "1")
    assert float(v1.tags["eval_accuracy"]) == 0.80 and v1.tags["preset"] == "tiny"
    run3 = client.get_run(third["run_id"]).data
    assert run3.tags["registry.promoted"] == "false"
    assert run3.tags["registry.previous_champion"] == "2"
    assert "0.7000 <= champion v2 0.8500" in run3.tags["registry.decision"]
    assert run3.metrics["eval_accuracy"] == 0.70

    # Self-contained: plm_core travels as a code path, the requirements are pinned.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/2"))
    assert (local / "code" / "plm_core" / "serving" / "classifier.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "sentencepiece==" in requirements

    script = textwrap.dedent(
        f"""
        import json, mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/{MODEL_NAME}@champion")
        out = model.predict(pd.DataFrame({{"text": ["the film was wonderful", "awful plot"]}}))
        print(json.dumps({{"columns": list(out.columns), "labels": out["label"].tolist(),
                           "probability": out["probability"].tolist()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["columns"] == ["label", "probability", "probability_negative", "probability_positive"]
    assert len(result["labels"]) == 2 and set(result["labels"]) <= {"negative", "positive"}
    assert all(0.5 <= p <= 1.0 for p in result["probability"])


def test_gate_compares_only_on_the_same_eval_set(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    experiment_id = ensure_experiment(uri, "eval-set-test", runs_dir=tmp_path)
    client = MlflowClient(uri)

    def register(accuracy: float, digest: str, policy: str = "keep") -> dict:
        return log_and_register(
            model_dir,
            tracking_uri=uri,
            experiment_id=experiment_id,
            model_name="eval-set-classifier",
            eval_metrics={"accuracy": accuracy},
            eval_set_digest=digest,
            on_new_eval_set=policy,
        )

    assert register(0.80, "a" * 64)["promoted"]
    other = register(0.95, "b" * 64)  # better, but on another eval set: not comparable
    assert not other["promoted"] and "not comparable" in other["decision"]
    worse_same = register(0.75, "a" * 64)
    assert not worse_same["promoted"] and "0.7500 <= champion v1 0.8000" in worse_same["decision"]
    better_same = register(0.85, "a" * 64)
    assert better_same["promoted"] and better_same["previous_champion"] == "1"
    forced = register(0.10, "c" * 64, policy="promote")
    assert forced["promoted"] and "policy 'promote'" in forced["decision"]
    name = "eval-set-classifier"
    assert str(client.get_model_version_by_alias(name, "champion").version) == forced["version"] == "5"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["plm.eval_set_digest"] == "b" * 64 and "not comparable" in v2.tags["plm.gate_decision"]
    assert v2.tags["plm.registration"] == "complete"
    with pytest.raises(ConfigError, match="on_new_eval_set"):
        register(0.9, "a" * 64, policy="sometimes")


def test_hf_export_artifact_loads_in_transformers(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    from plm_core.serving.classifier import ClassifierPredictor

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    exp = ensure_experiment(uri, "hf-test", runs_dir=tmp_path)
    result = log_and_register(
        model_dir, tracking_uri=uri, experiment_id=exp, model_name="hf-clf", eval_metrics={"accuracy": 0.5}
    )
    assert "BertForSequenceClassification" in result["hf_export"]
    hf_dir = Path(
        mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="hf", tracking_uri=uri)
    )
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    predictor = ClassifierPredictor(model_dir)
    ids = [
        predictor.tokenizer.cls_id,
        *predictor.tokenizer.encode(["a wonderful film"])[0],
        predictor.tokenizer.sep_id,
    ]
    with torch.no_grad():
        theirs = torch.softmax(hf(torch.tensor([ids])).logits, -1)[0].numpy()
    ours = predictor.predict_proba(["a wonderful film"])[0]
    assert theirs == pytest.approx(ours, abs=1e-4)
    assert hf.config.id2label == {0: "negative", 1: "positive"}


def _tiny_lm_dir(root: Path, tokenizer_dir: Path, steps: int) -> Path:
    """A decoder pretrain directory trained on one repeated sentence, so greedy generation is
    predictable: after "the film was" it continues with "good"."""
    import torch

    from plm_core.config import ModelConfig
    from plm_core.models.decoder import GPTForCausalLM
    from plm_core.models.io import save_model
    from plm_core.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = ModelConfig(
        family="decoder", arch="gpt2", vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
        intermediate_size=64, max_position=64, norm="pre", dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPTForCausalLM(cfg)
    sentence = tok.encode(["the film was good"])[0] + [tok.sep_id]
    batch = torch.tensor([[tok.cls_id] + sentence * 4] * 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(batch, labels=batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model.eval(), cfg, root, extra={"task": "clm"})
    return root


def test_lm_registers_gates_on_loss_and_generates_in_a_fresh_process(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tokenizer_dir = model_dir / "tokenizer"
    lm_dir = _tiny_lm_dir(tmp_path / "pretrain", tokenizer_dir, steps=60)
    assert not (lm_dir / "tokenizer").exists()  # a pretrain directory: the registry adds it
    uri = tracking_uri(tmp_path)
    exp = ensure_experiment(uri, "lm-test", runs_dir=tmp_path)

    def register(val_loss: float) -> dict:
        return log_and_register(
            lm_dir,
            tracking_uri=uri,
            experiment_id=exp,
            model_name="lm-test",
            eval_metrics={"val_loss": val_loss},
            eval_set_digest="p" * 64,
            tokenizer_dir=tokenizer_dir,
        )

    first = register(2.0)
    assert first["task"] == "lm" and first["gate_metric"] == "val_loss" and first["promoted"]
    assert "GPT2LMHeadModel" in first["hf_export"]
    worse = register(2.5)  # higher loss: stays candidate
    assert not worse["promoted"] and "2.5000 >= champion v1 2.0000" in worse["decision"]
    better = register(1.5)
    assert better["promoted"] and "1.5000 < champion v1 2.0000" in better["decision"]

    script = textwrap.dedent(
        """
        import json, mlflow, pandas as pd
        m = mlflow.pyfunc.load_model("models:/lm-test@champion")
        out = m.predict(pd.DataFrame({"prompt": ["the film was", "the film"]}), params={"max_new_tokens": 3})
        print(json.dumps(out["generated_text"].tolist()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    generated = json.loads(done.stdout.strip().splitlines()[-1])
    assert generated[0].strip().startswith("good"), generated
    assert generated[1].strip().startswith("was good"), generated


def _ner_dir(root: Path, tokenizer_dir: Path) -> Path:
    from dataclasses import replace

    from plm_core.config import FinetuneConfig

    ner = pytest.importorskip("plm_core.finetune.ner")
    from tests.unit.test_ner import TRAIN_CONLL, _tiny_model

    train = root / "train.conll"
    train.write_text(TRAIN_CONLL)
    cfg = FinetuneConfig(task="ner", train_path=str(train), dev_path=str(train), max_len=32, batch_size=2)
    ner.finetune_ner(tokenizer_dir, None, _tiny_model(), replace(cfg, epochs=1, threads=1), root / "ner")
    return root / "ner"


def _qa_dir(root: Path, tokenizer_dir: Path) -> Path:
    qa = pytest.importorskip("plm_core.finetune.qa")
    from tests.unit.test_qa import TINY, _cfg, write_squad

    train = write_squad(root / "squad.json", with_impossible=False)
    dev = write_squad(root / "squad_dev.json", with_impossible=False, indent=None)  # other bytes: no split
    qa.finetune_qa(tokenizer_dir, None, TINY, _cfg(train, dev, epochs=1), root / "qa")
    return root / "qa"


def test_ner_and_qa_register_and_predict_through_the_pyfunc(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("plm_core.serving.ner")
    pytest.importorskip("plm_core.serving.qa")
    import pandas as pd

    from plm_core.serving.ner import NerPredictor
    from plm_core.serving.qa import QaPredictor

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    exp = ensure_experiment(uri, "ner-qa-test", runs_dir=tmp_path)
    tokenizer_dir = model_dir / "tokenizer"
    ner_dir, qa_dir = _ner_dir(tmp_path, tokenizer_dir), _qa_dir(tmp_path, tokenizer_dir)
    ner = log_and_register(
        ner_dir, tracking_uri=uri, experiment_id=exp, model_name="ner-test", eval_metrics={"f1": 0.4}
    )
    qa = log_and_register(
        qa_dir, tracking_uri=uri, experiment_id=exp, model_name="qa-test", eval_metrics={"f1": 0.3}
    )
    assert (ner["task"], ner["gate_metric"], qa["task"], qa["gate_metric"]) == ("ner", "f1", "qa", "f1")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/ner-test/1", tracking_uri=uri))
    assert "seqeval==" in (local / "requirements.txt").read_text()

    texts = ["Peter Blackburn saw London", "the captain walked"]
    served = mlflow.pyfunc.load_model("models:/ner-test@champion").predict(pd.DataFrame({"text": texts}))
    assert [json.loads(e) for e in served["entities"]] == NerPredictor(ner_dir).predict(texts)
    questions = ["what did the captain find"]
    contexts = ["the captain found a silver candle in the harbour ."]
    frame = pd.DataFrame({"question": questions, "context": contexts})
    answers = mlflow.pyfunc.load_model("models:/qa-test@champion").predict(frame)
    expected = QaPredictor(qa_dir).predict(questions, contexts)[0]
    assert answers.loc[0, "answer"] == expected["answer"] and answers.loc[0, "start"] == expected["start"]
    assert answers.loc[0, "score"] == pytest.approx(expected["score"])
