"""Real Ray Train runs: 2 CPU workers (DDP over gloo), a tiny BERT, MLflow logging from rank 0, a
worker SIGKILLed mid-run that the run survives, and reruns under the same run name that resume
from the last checkpoint (or, for a finished run, do nothing). One Ray instance serves the module."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.models.io import load_config, load_state_dict
from plm_core.tracking import ensure_experiment
from plm_core.train.distributed import pretrain
from plm_core.train.pretrained import resolve_pretrained
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
    assert {a.path for a in client.list_artifacts(run_id)} >= {"loss_curve.png", "metrics.json", "model"}
    # The run id alone finds the model again (what `plm finetune --pretrained <run id>` does).
    downloaded = resolve_pretrained(
        run_id, first_run["kwargs"]["mlflow_tracking_uri"], first_run["root"] / "dl"
    )
    assert (downloaded / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def _kill_when_paused(pid_file: Path, run_dir: Path, killed: dict[str, int], stop: threading.Event) -> None:
    """The external killer: SIGKILL the worker that wrote its PID, once Ray's controller has
    registered a checkpoint. A checkpoint is on disk as soon as ``report()`` returns, but the
    controller only adopts it when it next polls the workers; a worker group that dies in between
    restarts from the previous one (seen here: from scratch, when the kill came < 1 s after the
    step-10 report). Waiting for the snapshot makes the test about resuming, not about that race."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"

    def registered() -> bool:
        try:
            return bool(json.loads(snapshot.read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
            return False

    while not stop.is_set():
        if pid_file.exists() and registered():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed_run(first_run):
    """first_run's config again under a new run name, with rank 1 SIGKILLed before step 17 (after
    the step-10 checkpoint and the step-15 log). Times itself: the test reports it."""
    root = first_run["root"]
    uri = first_run["kwargs"]["mlflow_tracking_uri"]
    run_id = MlflowClient(uri).create_run(ensure_experiment(uri, "test-pretrain", root)).info.run_id
    kwargs = dict(
        storage_path=root / "ray", run_name="tiny-killed", mlflow_tracking_uri=uri, mlflow_run_id=run_id
    )
    pid_file, killed, stop = root / "killed_worker.pid", {}, threading.Event()
    run_dir = root / "ray" / kwargs["run_name"]
    killer = threading.Thread(target=_kill_when_paused, args=(pid_file, run_dir, killed, stop), daemon=True)
    killer.start()
    started = time.perf_counter()
    try:
        summary = pretrain(
            first_run["pack"], first_run["tokenizer"], MODEL, _pretrain_config(20), root / "out_killed",
            fault_injection={"step": 16, "rank": 1, "pid_file": str(pid_file)}, **kwargs,
        )  # fmt: skip
    finally:
        stop.set()
    return {"summary": summary, "killed": killed, "kwargs": kwargs, "seconds": time.perf_counter() - started}


@pytest.mark.integration  # ~70 s here: a second worker group plus the restarted one
def test_killed_worker_resumes_from_last_checkpoint_to_the_same_loss(first_run, killed_run):
    """Ray restarts the worker group; the workers resume from the step-10 checkpoint and replay steps
    11-20 with the same data and randomness, so the run ends where the uninterrupted one did.

    Tolerance 1e-6 on the losses: the replay is bit-exact in practice (same world size, one thread
    per worker, gloo sums in a fixed order, weights and AdamW moments saved in fp32); the slack
    only allows for float re-association should a kernel pick another blocking."""
    killed = killed_run["killed"]
    assert killed, "the worker never reached the fault-injection step"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    summary, reference = killed_run["summary"], first_run["summary"]
    print(f"kill run: {killed_run['seconds']:.1f} s; final loss {summary['final_loss']!r} vs "
          f"{reference['final_loss']!r} uninterrupted")  # fmt: skip
    assert summary["steps"] == 20 and summary["tokens_seen"] == reference["tokens_seen"]
    assert summary["final_loss"] == pytest.approx(reference["final_loss"], abs=1e-6)
    assert summary["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)
    ours = json.loads((first_run["root"] / "out_killed" / "metrics.json").read_text())["train"]
    theirs = json.loads((first_run["root"] / "out" / "metrics.json").read_text())["train"]
    assert [h["step"] for h in ours] == list(range(1, 21))
    assert [h["loss"] for h in ours] == pytest.approx([h["loss"] for h in theirs], abs=1e-6)

    # One MLflow run across the restart: steps 5, 10, 15 were logged before the kill at 16, and 15
    # again by the restarted workers, which replayed 11-15 from the step-10 checkpoint.
    client, run_id = (
        MlflowClient(killed_run["kwargs"]["mlflow_tracking_uri"]),
        killed_run["kwargs"]["mlflow_run_id"],
    )
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [5, 10, 15, 15, 20]
    assert len({m.value for m in history if m.step == 15}) == 1  # the replay logged the same loss


@pytest.mark.integration  # ~40 s here: one worker group that finds nothing to do
def test_resuming_a_finished_run_does_nothing(first_run, killed_run):
    root, kwargs = first_run["root"], killed_run["kwargs"]
    run_dir = root / "ray" / kwargs["run_name"]
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint*"))
    client = MlflowClient(kwargs["mlflow_tracking_uri"])
    logged = len(client.get_metric_history(kwargs["mlflow_run_id"], "loss"))
    summary = pretrain(
        first_run["pack"], first_run["tokenizer"], MODEL, _pretrain_config(20), root / "out_again", **kwargs
    )
    assert summary["steps"] == 20
    assert summary["final_loss"] == killed_run["summary"]["final_loss"]
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == checkpoints  # no new checkpoint
    assert len(client.get_metric_history(kwargs["mlflow_run_id"], "loss")) == logged  # nothing logged
    assert (root / "out_again" / "model.safetensors").read_bytes() == (
        root / "out_killed" / "model.safetensors"
    ).read_bytes()


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


@pytest.mark.slow  # ~90 s more: a worker group that shards the model
@pytest.mark.integration
def test_fsdp_with_two_ray_workers_matches_ddp(first_run):
    """strategy="fsdp": each of the 2 workers holds half of every block's weights and AdamW state;
    gradients are reduce-scattered instead of all-reduced, which averages the same numbers, so the
    losses follow the DDP run's. The checkpoint is unsharded: it loads into a plain model."""
    from dataclasses import replace

    from plm_core.models import BertForMaskedLM
    from plm_core.models.io import load_weights

    root = first_run["root"]
    cfg = replace(_pretrain_config(20), strategy="fsdp")  # first_run's schedule: same max_steps
    summary = pretrain(
        first_run["pack"], first_run["tokenizer"], MODEL, cfg, root / "out_fsdp",
        storage_path=root / "ray", run_name="tiny-fsdp",
    )  # fmt: skip
    assert summary["steps"] == 20
    ours = json.loads((root / "out_fsdp" / "metrics.json").read_text())["train"]
    ddp = json.loads((root / "out" / "metrics.json").read_text())["train"]
    assert [h["loss"] for h in ours] == pytest.approx([h["loss"] for h in ddp], rel=1e-4)
    saved_cfg, _ = load_config(root / "out_fsdp")
    load_weights(BertForMaskedLM(saved_cfg), root / "out_fsdp")
