"""Knowledge distillation of a fine-tuned classifier (teacher) into a smaller one (student).

Hinton et al. 2015: the student matches the teacher's softened class distribution as well as the
gold labels,

    loss = alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 keeps the soft term's gradients on the scale of the hard term's as T grows (the soft
gradients shrink as 1/T^2). The teacher runs in eval mode, so its logits are a fixed function of
the input: they are computed once over the training set before the student's first step instead of
once per step and epoch, which would cost a teacher forward pass per student step for nothing.

The student is the teacher's architecture with fewer layers and/or a smaller hidden size. With the
teacher's hidden size it starts from the teacher's weights (embeddings, the head and evenly spaced
layers, as DistilBERT took every other layer of BERT); with another hidden size no teacher tensor
fits, so it starts from random init.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.factory import classification_model

TEACHER_LOGITS = "teacher_logits"


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """The loss above, averaged over the batch; logits [B, C], labels [B]."""
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ConfigError(f"distill_alpha must lie in [0, 1] and temperature > 0, got {alpha}, {temperature}")
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def distillation_loss_fn(alpha: float, temperature: float):  # noqa: ANN201 (a trainer LossFn)
    """``trainer.fit``'s ``loss_fn``: the batch carries the teacher's logits next to the inputs."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in (TEACHER_LOGITS, "labels")}
        logits = model(**inputs)["logits"]
        return distillation_loss(logits, batch[TEACHER_LOGITS], batch["labels"], alpha, temperature)

    return loss_fn


def student_config(teacher_cfg: ModelConfig, layers: int, hidden: int) -> ModelConfig:
    """The teacher's config with ``layers`` layers and ``hidden`` width (0 = the teacher's);
    the feed-forward width and head count scale with the hidden size (head size kept)."""
    layers = layers or teacher_cfg.num_layers
    hidden = hidden or teacher_cfg.hidden_size
    if layers < 1 or hidden < 1:
        raise ConfigError(f"student_layers and student_hidden must be >= 0, got {layers}, {hidden}")
    if hidden == teacher_cfg.hidden_size:
        return replace(teacher_cfg, num_layers=layers)
    head_dim = teacher_cfg.hidden_size // teacher_cfg.num_heads
    if hidden % head_dim:
        raise ConfigError(f"student_hidden {hidden} is not a multiple of the teacher's head size {head_dim}")
    ratio = teacher_cfg.intermediate_size / teacher_cfg.hidden_size
    overrides = dict(
        num_layers=layers,
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        intermediate_size=int(hidden * ratio),
    )
    if teacher_cfg.embedding_size:
        overrides["embedding_size"] = min(teacher_cfg.embedding_size, hidden)
    return replace(teacher_cfg, **overrides)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layer initialises each student layer: evenly spaced, ending on the last."""
    if student_layers > teacher_layers:
        raise ConfigError(
            f"a student of {student_layers} layers is larger than its {teacher_layers}-layer teacher"
        )
    step = teacher_layers / student_layers
    return [round((i + 1) * step) - 1 for i in range(student_layers)]


def build_student(
    teacher: nn.Module, teacher_cfg: ModelConfig, layers: int, hidden: int
) -> tuple[nn.Module, ModelConfig]:
    """The student and its config; initialised from the teacher where the shapes allow (above)."""
    cfg = student_config(teacher_cfg, layers, hidden)
    student = classification_model(cfg, teacher.num_labels)
    if cfg.hidden_size != teacher_cfg.hidden_size:
        return student, cfg
    if teacher_cfg.share_layers:
        student.load_state_dict(teacher.state_dict())  # one shared block: only the depth differs
        return student, cfg
    mapping = layer_map(teacher_cfg.num_layers, cfg.num_layers)
    state = {}
    for key, tensor in teacher.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["encoder", "layers"]:
            teacher_layer = int(parts[2])
            if teacher_layer not in mapping:
                continue
            parts[2] = str(mapping.index(teacher_layer))
        state[".".join(parts)] = tensor
    student.load_state_dict(state)
    return student, cfg
