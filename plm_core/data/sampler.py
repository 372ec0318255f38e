"""The order in which one rank reads packed sequences, as a resumable PyTorch sampler.

The order is the one ``plm_core.train.loop`` uses: a global stream of samples in which epoch
``e`` is a seeded permutation of the sequences, read strided by rank (rank ``r`` of ``W`` takes
stream positions ``r, r + W, r + 2W ...``). The whole state is one number, ``samples_seen``, the
stream position of the next update, so a checkpoint saved at any world size resumes at another.
Endless by design: step-based pretraining stops after ``max_steps``, not at an epoch boundary.

With a prefetching ``DataLoader`` the sampler runs ahead of the model; resume from the number of
samples the training loop actually consumed (``load_state_dict({"samples_seen": consumed})``),
not from the sampler's own position at save time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from plm_core.errors import ConfigError

# Seed domain of the epoch order in plm_core.train.loop (its _ORDER), so both draw the same order.
_ORDER_DOMAIN = 3


def epoch_order(num_sequences: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(num_sequences)`` read in ``epoch``."""
    state = np.random.SeedSequence([seed, _ORDER_DOMAIN, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.randperm(num_sequences, generator=torch.Generator().manual_seed(int(state)))


class PackedSampler(Sampler[int]):
    """Sequence indices for one rank, endless, from stream position ``samples_seen``."""

    def __init__(
        self, num_sequences: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, samples_seen: int = 0
    ) -> None:
        if num_sequences < 1:
            raise ConfigError(f"num_sequences must be >= 1, got {num_sequences}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        self.num_sequences = num_sequences
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.samples_seen = samples_seen
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_sequences)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.num_sequences, self.seed, epoch)
        return int(self._order[offset])

    def __iter__(self) -> Iterator[int]:
        while True:
            index = self._index(self.samples_seen + self.rank)
            self.samples_seen += self.world_size
            yield index

    def state_dict(self) -> dict[str, Any]:
        """The stream position plus what must match on restore (same data, same seed)."""
        return {"samples_seen": self.samples_seen, "seed": self.seed, "num_sequences": self.num_sequences}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; a different seed or sequence count is an error, since
        the position would then point into a different order."""
        for key in ("seed", "num_sequences"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}")
        self.samples_seen = int(state["samples_seen"])
