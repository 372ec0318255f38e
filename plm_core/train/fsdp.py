"""FSDP (``fully_shard``, PyTorch's FSDP2) for models whose weights, gradients and AdamW state do
not fit on one device under DDP.

Each block of every ``nn.ModuleList`` (the transformer layers of all three families) becomes its
own shard group, then the root takes the rest (embeddings, tied LM head, final norm): at any time
only one block's full weights are gathered, the torchtitan layout. Checkpoints stay in the
unsharded format of DDP runs (model.safetensors + a full optimizer state), so fine-tuning and
``load_weights`` read them unchanged; gathering them is a collective every rank joins.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` and shard it in place over the default process group."""
    model.to(device)
    for module_list in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in dict.fromkeys(module_list):  # ALBERT repeats one shared layer: shard it once
            if not isinstance(block, FSDPModule):
                fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unsharded model and optimizer state dicts on CPU (complete on rank 0; a collective)."""
    return get_model_state_dict(model, options=_FULL), get_optimizer_state_dict(
        model, optimizer, options=_FULL
    )


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> None:
    """Scatter full state dicts (every rank holds them, read from the checkpoint) into the shards."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
