"""The GPU code paths of pretraining: bf16 autocast, fused AdamW on CUDA, torch.compile, NCCL chosen
by Ray Train for GPU workers, MFU from the device's peak. Skipped without CUDA."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.train.loop import Pretrainer
from plm_core.train.mfu import device_peak_flops
from tests.unit.test_loader import write_pack_dir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

VOCAB = 512
MODEL = ModelConfig(
    vocab_size=VOCAB, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512, max_position=128,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    ids = np.arange(7, VOCAB)
    p = 1.0 / np.arange(1, len(ids) + 1)
    p /= p.sum()
    docs = {
        "train": [rng.choice(ids, p=p, size=500) for _ in range(100)],
        "validation": [rng.choice(ids, p=p, size=500) for _ in range(4)],
    }
    return write_pack_dir(tmp_path_factory.mktemp("pack"), docs, VOCAB)


def _config(pack: Path, **pretrain) -> dict:
    cfg = PretrainConfig(
        **{"seq_len": 128, "batch_size": 8, "max_steps": 20, "warmup_steps": 2, "lr": 3e-3, **pretrain}
    )
    return {
        "pack_dir": str(pack),
        "tokenizer": {"vocab_size": VOCAB, "mask_id": 4, "special_ids": list(range(7))},
        "model": asdict(MODEL),
        "pretrain": asdict(cfg),
    }


def test_bf16_autocast_and_fused_adamw_on_cuda(pack: Path):
    trainer = Pretrainer(_config(pack), device=torch.device("cuda"))
    assert trainer._autocast()._enabled and trainer._autocast().fast_dtype == torch.bfloat16
    assert trainer.optimizer.defaults["fused"] and all(
        p.is_cuda for g in trainer.optimizer.param_groups for p in g["params"]
    )
    batch = trainer.train_batch()
    with trainer._autocast():
        logits = trainer.model(**batch)["logits"]
    assert logits.dtype == torch.bfloat16
    losses = [trainer.train_step()["loss"] for _ in range(20)]
    assert losses[-1] < losses[0] - 0.3, losses
    assert device_peak_flops() is not None, (
        f"{torch.cuda.get_device_name()}: add its peak to mfu.PEAK_BF16_FLOPS"
    )


def test_compiled_model_trains_like_eager(pack: Path):
    eager = Pretrainer(_config(pack, max_steps=5), device=torch.device("cuda"))
    compiled = Pretrainer(_config(pack, max_steps=5, compile=True), device=torch.device("cuda"))
    assert compiled.model is not compiled.raw_model
    a = [eager.train_step()["loss"] for _ in range(5)]
    b = [compiled.train_step()["loss"] for _ in range(5)]
    # bf16 autocast with fused kernels: the compiled graph rounds differently, not more than that.
    assert b == pytest.approx(a, rel=2e-2)


def test_ray_train_picks_nccl_for_gpu_workers(tmp_path: Path):
    import ray
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from plm_core.train.distributed import scaling_config

    def loop(config: dict) -> None:
        import torch.distributed as dist

        Path(config["out"]).write_text(
            json.dumps({"backend": dist.get_backend(), "cuda": torch.cuda.is_available()})
        )

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        cfg = PretrainConfig(num_workers=1, use_gpu=True, threads_per_worker=1)
        assert scaling_config(cfg).resources_per_worker == {"CPU": 1, "GPU": 1.0}
        TorchTrainer(
            loop,
            train_loop_config={"out": str(tmp_path / "backend.json")},
            scaling_config=scaling_config(cfg),
            run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="nccl"),
        ).fit()
    finally:
        ray.shutdown()
    assert json.loads((tmp_path / "backend.json").read_text()) == {"backend": "nccl", "cuda": True}
