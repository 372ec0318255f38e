"""The training pieces without Ray: overfitting, optimizer groups, schedule, data order, exact resume."""

from __future__ import annotations

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
