"""Distillation: the loss formula, a student that learns from the teacher alone, student building."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from plm_core.config import model_preset
from plm_core.errors import ConfigError
from plm_core.finetune.distill import (
    build_student,
    distillation_loss,
    distillation_loss_fn,
    layer_map,
    student_config,
)
from plm_core.finetune.trainer import TrainerConfig, fit
from plm_core.models.factory import classification_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Toy models gain nothing from threads, and on a shared machine two spinning intra-op
    threads per process make each step ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_loss_formula_on_a_fixed_example() -> None:
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    alpha, temperature = 0.3, 2.0

    # By hand: CE on the hard labels, KL(teacher_T || student_T) per example, batch mean, T^2.
    ce = -sum(math.log(_softmax(s)[y]) for s, y in zip(student.tolist(), labels.tolist(), strict=True)) / 2
    kl = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        ps = _softmax([x / temperature for x in s])
        pt = _softmax([x / temperature for x in t])
        kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl / 2

    got = distillation_loss(student, teacher, labels, alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # alpha = 1 is plain cross-entropy; identical logits leave only the hard term.
    assert float(distillation_loss(student, teacher, labels, 1.0, temperature)) == pytest.approx(ce, rel=1e-6)
    assert float(distillation_loss(student, student, labels, 0.0, temperature)) == pytest.approx(
        0.0, abs=1e-7
    )
    with pytest.raises(ConfigError):
        distillation_loss(student, teacher, labels, 1.5, temperature)


class _Linear(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.proj(x)}


def test_student_learns_the_teacher_not_the_labels() -> None:
    """With alpha=0 only the teacher's soft targets carry signal: the student must come to agree
    with the teacher even though the hard labels it is given are random."""
    torch.manual_seed(0)
    teacher = _Linear(8, 3)
    with torch.no_grad():
        teacher.proj.weight.mul_(10)
    x = torch.randn(512, 8)
    with torch.no_grad():
        teacher_logits = teacher(x)["logits"]
    random_labels = torch.randint(0, 3, (512,))
    batches = [
        {
            "x": x[i : i + 64],
            "teacher_logits": teacher_logits[i : i + 64],
            "labels": random_labels[i : i + 64],
        }
        for i in range(0, 512, 64)
    ]
    student = _Linear(8, 3)

    def agreement() -> float:
        with torch.no_grad():
            return float((student(x)["logits"].argmax(-1) == teacher_logits.argmax(-1)).float().mean())

    before = agreement()
    cfg = TrainerConfig(epochs=30, lr=5e-2, warmup_ratio=0.0, weight_decay=0.0)
    fit(student, lambda epoch: batches, len(batches), cfg, loss_fn=distillation_loss_fn(0.0, 2.0))
    assert agreement() > 0.95 > before
    assert float((student(x)["logits"].argmax(-1) == random_labels).float().mean()) < 0.5


def test_student_from_teacher_layers_and_smaller_hidden() -> None:
    teacher_cfg = model_preset("mini", "encoder", vocab_size=500)  # 4 layers, hidden 256
    torch.manual_seed(0)
    teacher = classification_model(teacher_cfg, 2)
    assert layer_map(4, 2) == [1, 3] and layer_map(4, 1) == [3] and layer_map(2, 2) == [0, 1]

    student, cfg = build_student(teacher, teacher_cfg, layers=2, hidden=0)
    assert cfg.num_layers == 2 and cfg.hidden_size == 256
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["encoder.layers.0.attn.query.weight"], t["encoder.layers.1.attn.query.weight"])
    assert torch.equal(s["encoder.layers.1.ffn.down.weight"], t["encoder.layers.3.ffn.down.weight"])
    assert torch.equal(s["encoder.embeddings.word.weight"], t["encoder.embeddings.word.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])

    narrow = student_config(teacher_cfg, layers=1, hidden=128)
    assert (narrow.hidden_size, narrow.num_heads, narrow.intermediate_size) == (128, 2, 512)
    small, _ = build_student(teacher, teacher_cfg, layers=1, hidden=128)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in teacher.parameters()) / 3
    with pytest.raises(ConfigError, match="larger"):
        build_student(teacher, teacher_cfg, layers=6, hidden=0)
    with pytest.raises(ConfigError, match="head size"):
        student_config(teacher_cfg, layers=1, hidden=100)
