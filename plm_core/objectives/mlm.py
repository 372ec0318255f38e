"""BERT's masked-language-model corruption (Devlin et al. 2019, section 3.1).

Each non-special position is selected with probability ``p``; a selected token becomes ``[MASK]``
80% of the time, a random token 10% and stays itself 10%, and only selected positions carry a
label. Unlike HF's collator, the random replacement never draws a special token: a stray ``[CLS]``
or ``[SEP]`` in the middle of a sequence is noise the model would learn to predict for nothing.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from plm_core.models.encoder import IGNORE_INDEX

MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1  # the remaining 0.1 keep their original token


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` [...] -> (corrupted inputs [...], labels [...] with -100 where not selected).

    ``generator`` must live on ``input_ids``' device; the training loop masks on CPU in the data
    path with a per-step generator, which makes a resumed run draw the same masks.
    """
    device = input_ids.device
    specials = torch.tensor(sorted(special_ids), dtype=input_ids.dtype, device=device)
    selected = torch.rand(input_ids.shape, generator=generator, device=device) < probability
    selected &= ~torch.isin(input_ids, specials)
    labels = torch.where(selected, input_ids, IGNORE_INDEX)

    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < MASK_FRACTION)
    to_random = selected & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)

    allowed = torch.arange(vocab_size, device=device)
    allowed = allowed[~torch.isin(allowed, specials)]  # [V - specials]
    draws = torch.randint(len(allowed), input_ids.shape, generator=generator, device=device)
    corrupted = torch.where(to_mask, mask_id, input_ids)
    corrupted = torch.where(to_random, allowed[draws].to(input_ids.dtype), corrupted)
    return corrupted, labels
