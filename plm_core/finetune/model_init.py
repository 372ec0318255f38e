"""A task model's directory, from building it to writing it.

Shared by classification (both heads), NER and QA: the model starts from a pretrained checkpoint
or from random init, and the pretrained directory's config.json wins over the given model config,
because the checkpoint's tensors only fit the sizes they were trained with. The written directory
is the contract of docs/contracts.md: weights + config.json, and a copy of the tokenizer so that
serving needs nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.io import load_config, load_encoder_into, save_model

M = TypeVar("M", bound=nn.Module)
TOKENIZER_FILES = ("spm.model", "tokenizer.json")


def build_task_model(
    make: Callable[[ModelConfig], M],
    model_cfg: ModelConfig,
    vocab_size: int,
    pretrained_dir: Path | None,
    load: Callable[[nn.Module, Path], Any] = load_encoder_into,
) -> tuple[M, ModelConfig]:
    """``make(body_cfg)`` with ``load(model, pretrained_dir)`` applied when ``pretrained_dir`` is
    given (by default the pretrained body's weights only); returns the model and the body config
    it was built with."""
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
        load(model, pretrained_dir)
    return model, body_cfg


def save_task_model(
    model: nn.Module, body_cfg: ModelConfig, out_dir: Path, extra: dict[str, Any], tokenizer_dir: Path
) -> None:
    """Weights + config.json (``extra`` holds the task keys) and ``tokenizer/`` in ``out_dir``."""
    save_model(model, body_cfg, out_dir, extra=extra)
    (out_dir / "tokenizer").mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(Path(tokenizer_dir) / name, out_dir / "tokenizer" / name)
