"""The training pieces without Ray: overfitting, optimizer groups, schedule, data order, exact resume."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.models import BertForMaskedLM
from plm_core.objectives.mlm import mask_tokens
from plm_core.train.checkpoint import read_trainer_state
from plm_core.train.loop import Pretrainer
from plm_core.train.optim import build_optimizer, build_scheduler, warmup_linear_decay
from tests.unit.test_loader import write_pack_dir

VOCAB = 60
SPECIAL = [0, 1, 2, 3, 4, 5, 6]
TINY = ModelConfig(
    vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=64
)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are too small to gain from a second thread, and on a shared 2-core machine
    a busy neighbour makes multi-threaded kernels spin-wait (10x slower steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mlm_overfits_one_batch():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**asdict(TINY), "dropout": 0.0, "attention_dropout": 0.0})
    model = BertForMaskedLM(cfg)
    ids = torch.randint(7, VOCAB, (8, 16), generator=torch.Generator().manual_seed(0))  # [8, 16]
    inputs, labels = mask_tokens(
        ids, mask_id=4, vocab_size=VOCAB, special_ids=SPECIAL, probability=0.3,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    optimizer = build_optimizer(model, lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = model(inputs, labels=labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < 0.05:
            break
    assert losses[-1] < 0.05, f"loss {losses[0]:.3f} -> {losses[-1]:.3f} after {len(losses)} steps"


def test_no_weight_decay_on_biases_and_layernorm():
    model = BertForMaskedLM(TINY)
    decay, no_decay = build_optimizer(model, lr=1e-3, weight_decay=0.01).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith("bias") or "norm" in n
    }
    assert "encoder.embeddings.word.weight" in {names[id(p)] for p in decay["params"]}


def test_warmup_then_linear_decay():
    factors = [warmup_linear_decay(s, warmup_steps=4, max_steps=10) for s in range(10)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    optimizer = build_optimizer(torch.nn.Linear(2, 2), lr=0.1, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup_steps=4, max_steps=10)
    seen = []
    for _ in range(10):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * f for f in factors])


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Zipf-distributed ids: something to learn (the unigram entropy is ~0.8 nats below uniform).
    rng = np.random.default_rng(0)
    ids = np.arange(7, VOCAB)
    p = 1.0 / np.arange(1, len(ids) + 1)
    p /= p.sum()
    docs = {
        "train": [rng.choice(ids, p=p, size=int(rng.integers(20, 60))) for _ in range(40)],
        "validation": [rng.choice(ids, p=p, size=40) for _ in range(4)],
    }
    return write_pack_dir(tmp_path_factory.mktemp("pack"), docs, VOCAB)


def _config(pack: Path, **pretrain) -> dict:
    return {
        "pack_dir": str(pack),
        "tokenizer": {"vocab_size": VOCAB, "mask_id": 4, "special_ids": SPECIAL},
        "model": asdict(TINY),
        "pretrain": asdict(
            PretrainConfig(**{"seq_len": 32, "batch_size": 4, "max_steps": 6, "warmup_steps": 2, **pretrain})
        ),
    }


def test_ranks_read_disjoint_strides_of_one_seeded_order(pack: Path):
    ranks = [Pretrainer(_config(pack), rank=r, world_size=2) for r in range(2)]
    n = len(ranks[0].train_data)
    stream = torch.cat([ranks[0]._epoch_order(0), ranks[0]._epoch_order(1)])
    for samples_seen in (0, 8, 48):  # the last update wraps from epoch 0 into epoch 1
        got = [t.train_indices(samples_seen) for t in ranks]
        assert torch.equal(got[0], stream[samples_seen : samples_seen + 8 : 2])
        assert torch.equal(got[1], stream[samples_seen + 1 : samples_seen + 8 : 2])
    assert sorted(stream[:n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n:])  # a fresh order each epoch
    again = Pretrainer(_config(pack), rank=0, world_size=2)
    assert torch.equal(again.train_indices(8), ranks[0].train_indices(8))


def test_resume_from_checkpoint_continues_exactly(pack: Path, tmp_path: Path):
    straight = Pretrainer(_config(pack))
    for _ in range(6):
        straight.train_step()

    first_half = Pretrainer(_config(pack))
    for _ in range(3):
        first_half.train_step()
    first_half.save(tmp_path)
    assert read_trainer_state(tmp_path).step == 3

    resumed = Pretrainer(_config(pack))
    for _ in range(2):  # move weights, AdamW moments, schedule and position away; restore resets all
        resumed.train_step()
    resumed.restore(tmp_path)
    for _ in range(3):
        resumed.train_step()
    # Dropout is on (0.1): equality needs the restored weights, AdamW moments, LR schedule,
    # data position and the per-step randomness all to match.
    assert [h["loss"] for h in resumed.state.train_history] == [
        h["loss"] for h in straight.state.train_history
    ]
    assert resumed.state.samples_seen == straight.state.samples_seen == 6 * 4
    for name, t in straight.raw_model.state_dict().items():
        assert torch.equal(resumed.raw_model.state_dict()[name], t), name


def test_evaluation_is_repeatable_and_loss_falls(pack: Path):
    trainer = Pretrainer(_config(pack, lr=1e-2, eval_batches=2, max_steps=30))
    before = trainer.evaluate()
    assert trainer.evaluate() == before
    assert before["perplexity"] == pytest.approx(np.exp(before["val_loss"]))
    for _ in range(30):
        trainer.train_step()
    after = trainer.evaluate()["val_loss"]
    assert after < before["val_loss"] - 0.3, (before, after)


def _no_dropout(pack: Path, **pretrain) -> dict:
    config = _config(pack, **pretrain)
    config["model"] = {**config["model"], "dropout": 0.0, "attention_dropout": 0.0}
    return config


def _grads(trainer: Pretrainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.raw_model.named_parameters() if p.grad is not None}


def test_accumulated_micro_batches_give_the_gradient_of_their_union(pack: Path):
    """Two micro-batches of 2 (with their own masks) against the same 4 rows as one batch: the
    token-weighted accumulation reproduces the big batch's gradient and loss."""
    accum = Pretrainer(_no_dropout(pack, batch_size=2, grad_accum_steps=2))
    big = Pretrainer(_no_dropout(pack, batch_size=4))
    micro = [accum.train_batch(0), accum.train_batch(1)]
    union = {k: torch.cat([micro[0][k], micro[1][k]]) for k in micro[0]}
    assert torch.equal(
        torch.cat([accum.train_indices(0, 0), accum.train_indices(0, 1)]), big.train_indices(0)
    )
    counts = [int((b["labels"] != -100).sum()) for b in micro]
    assert counts[0] != counts[1]  # unequal masked counts: a plain mean of means would be wrong
    loss_accum = accum.forward_backward(micro)
    loss_big = big.forward_backward([union])
    assert loss_accum == pytest.approx(loss_big, rel=1e-6)
    g_accum, g_big = _grads(accum), _grads(big)
    assert g_accum.keys() == g_big.keys()
    for name, g in g_big.items():
        torch.testing.assert_close(g_accum[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_an_accumulating_update_reads_k_micro_batches_of_the_stream(pack: Path):
    trainer = Pretrainer(_config(pack, batch_size=2, grad_accum_steps=3, max_steps=4))
    metrics = trainer.train_step()
    assert trainer.state.samples_seen == 6 and trainer.state.tokens_seen == 6 * 32
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


@pytest.fixture
def gloo_world_of_one():
    """A real process group (gloo, world size 1), so that DDP runs its reducer and comm hooks."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _allreduces_per_update(pack: Path, accum: int, monkeypatch=None) -> int:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    calls: list[int] = []

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        ddp = DDP(model)

        def counting_hook(state, bucket):
            calls.append(1)
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_hook)
        return ddp

    trainer = Pretrainer(_config(pack, batch_size=2, grad_accum_steps=accum), wrap_model=wrap)
    trainer.train_step()
    calls.clear()
    trainer.train_step()
    return len(calls)


def test_inner_micro_steps_do_not_all_reduce(pack: Path, gloo_world_of_one, monkeypatch):
    once = _allreduces_per_update(pack, accum=1)
    assert once > 0
    assert _allreduces_per_update(pack, accum=4) == once  # only the last micro-step's backward syncs
    # The count would catch a loop that forgot no_sync: without it every micro-step all-reduces.
    monkeypatch.setattr(Pretrainer, "_no_sync", lambda self, inner: contextlib.nullcontext())
    assert _allreduces_per_update(pack, accum=4) == 4 * once


def test_checkpoint_holds_the_rng_states(pack: Path, tmp_path: Path):
    import random

    trainer = Pretrainer(_config(pack))
    trainer.train_step()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    trainer.save(tmp_path)
    after_save = (torch.rand(4), np.random.rand(4), random.random())
    assert (tmp_path / "rng_state.json").is_file()
    restored = Pretrainer(_config(pack))
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    restored.restore(tmp_path)
    assert torch.equal(torch.rand(4), after_save[0])
    assert np.array_equal(np.random.rand(4), after_save[1])
    assert random.random() == after_save[2]
    assert restored.state.step == 1


def test_bf16_autocast_on_cpu_when_asked(pack: Path):
    """precision="bf16" runs the forward in bf16 autocast even on CPU; "auto" keeps CPU in fp32."""
    assert Pretrainer(_config(pack))._autocast().fast_dtype == torch.bfloat16
    assert not Pretrainer(_config(pack))._autocast()._enabled
    trainer = Pretrainer(_config(pack, precision="bf16"))
    assert trainer._autocast()._enabled
    assert math.isfinite(trainer.train_step()["loss"])


def test_bad_speed_options_fail_with_the_field_named(pack: Path):
    from plm_core.errors import ConfigError

    for bad, field in [({"precision": "fp16"}, "precision"), ({"grad_accum_steps": 0}, "grad_accum_steps"),
                       ({"strategy": "zero3"}, "strategy"), ({"lr_schedule": "step"}, "lr_schedule")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            Pretrainer(_config(pack, **bad))


def test_fsdp_trains_like_the_plain_model_and_resumes_exactly(pack: Path, gloo_world_of_one, tmp_path: Path):
    """FSDP2 over a world of one (gloo, CPU): the same losses as the unwrapped model, and a
    checkpoint in the unsharded format that resumes the sharded run and loads into a plain model."""
    from plm_core.models.io import load_weights
    from plm_core.train.fsdp import is_sharded, shard_model

    def fsdp(**kw) -> Pretrainer:
        wrap = lambda m: shard_model(m, torch.device("cpu"))  # noqa: E731
        return Pretrainer(_no_dropout(pack, strategy="fsdp", **kw), wrap_model=wrap)

    plain = Pretrainer(_no_dropout(pack))
    reference = [plain.train_step()["loss"] for _ in range(4)]

    first = fsdp()
    assert is_sharded(first.raw_model)
    losses = [first.train_step()["loss"] for _ in range(2)]
    first.save(tmp_path, gathered=first.gather_full_state())
    with pytest.raises(RuntimeError, match="gather_full_state"):
        first.save(tmp_path / "again")
    resumed = fsdp()
    resumed.restore(tmp_path)
    assert resumed.state.step == 2
    losses += [resumed.train_step()["loss"] for _ in range(2)]
    assert losses == pytest.approx(reference, rel=1e-5)

    loaded = BertForMaskedLM(ModelConfig(**{**asdict(TINY), "dropout": 0.0, "attention_dropout": 0.0}))
    load_weights(loaded, tmp_path)  # what fine-tuning does with a pretrain checkpoint
    after_two = Pretrainer(_no_dropout(pack))
    for _ in range(2):
        after_two.train_step()
    for name, t in after_two.raw_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], t, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow  # inductor compiles C++ on CPU: 1-3 min on a busy 2-core machine
def test_compiled_model_trains_like_eager_on_cpu(pack: Path):
    eager = Pretrainer(_no_dropout(pack))
    compiled = Pretrainer(_no_dropout(pack, compile=True))
    assert compiled.model is not compiled.raw_model
    a = [eager.train_step()["loss"] for _ in range(3)]
    b = [compiled.train_step()["loss"] for _ in range(3)]
    assert b == pytest.approx(a, rel=1e-4)  # fp32: fused kernels only reassociate sums


def test_init_from_starts_with_the_pretrained_weights(pack: Path, tmp_path: Path):
    """Continued pretraining (`plm pretrain --pretrained DIR`): the new run starts from DIR's weights
    with a fresh optimizer and step counter."""
    first = Pretrainer(_config(pack))
    for _ in range(2):
        first.train_step()
    first.save(tmp_path)
    again = Pretrainer(_config(pack, init_from=str(tmp_path), seed=1))
    assert again.state.step == 0 and not again.optimizer.state
    for name, t in first.raw_model.state_dict().items():
        assert torch.equal(again.raw_model.state_dict()[name], t), name
    fresh = Pretrainer(_config(pack, seed=1))
    assert not torch.equal(
        fresh.raw_model.state_dict()["encoder.embeddings.word.weight"],
        again.raw_model.state_dict()["encoder.embeddings.word.weight"],
    )
