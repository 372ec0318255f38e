"""Pretraining objectives: how a batch of token ids becomes model inputs and labels."""

from plm_core.objectives.mlm import mask_tokens

__all__ = ["mask_tokens"]
