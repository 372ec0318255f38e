"""Real Ray Train runs: 2 CPU workers (DDP over gloo), a tiny BERT, MLflow logging from rank 0, and a
rerun under the same run name that resumes from the last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.models.io import load_config, load_state_dict
from plm_core.tracking import ensure_experiment
from plm_core.train.distributed import pretrain
from tests.unit.test_loader import write_pack_dir

VOCAB = 200
SPECIAL = list(range(7))


def _inputs(root: Path) -> tuple[Path, Path]:
    """A pack of Zipf-distributed documents (a unigram to learn) and its tokenizer.json."""
    rng = np.random.default_rng(0)
    ids = np.arange(len(SPECIAL), VOCAB)
    p = 1.0 / np.arange(1, len(ids) + 1)
    p /= p.sum()
    docs = {
        "train": [rng.choice(ids, p=p, size=int(rng.integers(50, 300))) for _ in range(200)],
        "validation": [rng.choice(ids, p=p, size=200) for _ in range(10)],
    }
    pack = write_pack_dir(root / "pack", docs, VOCAB)
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    meta = {
        "vocab_size": VOCAB, "model_type": "unigram", "pad_id": 0, "unk_id": 1, "cls_id": 2,
        "sep_id": 3, "mask_id": 4, "bos_id": 5, "eos_id": 6, "sentinel_ids": [], "special_ids": SPECIAL,
    }  # fmt: skip
    (tokenizer / "tokenizer.json").write_text(json.dumps(meta))
    return pack, tokenizer


MODEL = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=64)


def _pretrain_config(max_steps: int) -> PretrainConfig:
    return PretrainConfig(
        seq_len=64, batch_size=8, max_steps=max_steps, lr=3e-3, warmup_steps=2, num_workers=2,
        checkpoint_every=10, eval_every=10, eval_batches=2, log_every=5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    """A 20-step run logging to a fresh MLflow run; Ray stays up for the resume test, then stops."""
    root = tmp_path_factory.mktemp("ray_pretrain")
    pack, tokenizer = _inputs(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = MlflowClient(uri).create_run(ensure_experiment(uri, "test-pretrain", root)).info.run_id
    kwargs = dict(storage_path=root / "ray", run_name="tiny", mlflow_tracking_uri=uri, mlflow_run_id=run_id)
    summary = pretrain(pack, tokenizer, MODEL, _pretrain_config(20), root / "out", **kwargs)
    yield {"root": root, "pack": pack, "tokenizer": tokenizer, "summary": summary, "kwargs": kwargs}
    ray.shutdown()


@pytest.mark.integration  # ~60-80 s here, most of it Ray start-up
def test_pretrain_with_two_ray_workers(first_run):
    summary, out = first_run["summary"], first_run["root"] / "out"
    assert summary["steps"] == 20
    assert summary["tokens_seen"] == 20 * 2 * 8 * 64
    assert summary["final_loss"] < summary["first_loss"] - 0.5
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors", "config.json", "metrics.json", "loss_curve.png"
    }  # fmt: skip
    saved_cfg, extra = load_config(out)
    assert saved_cfg.vocab_size == VOCAB  # filled from tokenizer.json
    assert extra["task"] == "mlm" and extra["pretrain"]["max_steps"] == 20
    assert all(k.startswith(("encoder.", "mlm_head.")) for k in load_state_dict(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["train"]] == list(range(1, 21))
    assert [v["step"] for v in metrics["validation"]] == [10, 20]
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    client, run_id = (
        MlflowClient(first_run["kwargs"]["mlflow_tracking_uri"]),
        first_run["kwargs"]["mlflow_run_id"],
    )
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [5, 10, 15, 20]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [10, 20]
    assert client.get_metric_history(run_id, "tokens_per_second")[-1].value > 0
    assert {a.path for a in client.list_artifacts(run_id)} >= {"loss_curve.png", "metrics.json"}


@pytest.mark.slow  # ~35-45 s more: a second worker group (Ray is already up)
@pytest.mark.integration
def test_rerun_with_the_same_run_name_resumes(first_run):
    """Same storage_path and run_name, more steps: Ray hands the last checkpoint to the workers,
    which continue from step 20 with the history of the first run intact."""
    root = first_run["root"]
    summary = pretrain(
        first_run["pack"], first_run["tokenizer"], MODEL, _pretrain_config(24), root / "out24",
        **first_run["kwargs"],
    )  # fmt: skip
    assert summary["steps"] == 24 and summary["tokens_seen"] == 24 * 2 * 8 * 64
    before = json.loads((root / "out" / "metrics.json").read_text())
    after = json.loads((root / "out24" / "metrics.json").read_text())
    assert after["train"][:20] == before["train"]
    assert [h["step"] for h in after["train"]] == list(range(1, 25))
    assert [v["step"] for v in after["validation"]] == [10, 20, 24]
