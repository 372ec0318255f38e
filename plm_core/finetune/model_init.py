"""A task model over a body that starts from a pretrained checkpoint or from random init.

Shared by classification, NER and QA: the pretrained directory's config.json wins over the given
model config, because the checkpoint's tensors only fit the sizes they were trained with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.io import load_config, load_encoder_into

M = TypeVar("M", bound=nn.Module)


def build_task_model(
    make: Callable[[ModelConfig], M], model_cfg: ModelConfig, vocab_size: int, pretrained_dir: Path | None
) -> tuple[M, ModelConfig]:
    """``make(body_cfg)`` with the pretrained body's weights loaded when ``pretrained_dir`` is given;
    returns the model and the body config it was built with."""
    if pretrained_dir is not None:
        body_cfg, _ = load_config(pretrained_dir)
    else:
        body_cfg = model_cfg if model_cfg.vocab_size else replace(model_cfg, vocab_size=vocab_size)
    if body_cfg.vocab_size < vocab_size:
        source = pretrained_dir / "config.json" if pretrained_dir is not None else "model config"
        raise ConfigError(
            f"{source}: vocab_size {body_cfg.vocab_size} is smaller than the tokenizer's {vocab_size}"
        )
    model = make(body_cfg)
    if pretrained_dir is not None:
        load_encoder_into(model, pretrained_dir)
    return model, body_cfg
