"""PackedSampler: per-rank order, save/restore, and the same order as the training loop."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from plm_core.data.loader import PackedSequences
from plm_core.data.sampler import PackedSampler
from plm_core.errors import ConfigError
from tests.unit.test_loader import write_pack_dir


def _take(sampler: PackedSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_ranks_partition_each_epoch() -> None:
    ranks = [PackedSampler(10, rank=r, world_size=2, seed=1) for r in range(2)]
    first_epoch = _take(ranks[0], 5) + _take(ranks[1], 5)
    assert sorted(first_epoch) == list(range(10))
    single = _take(PackedSampler(10, seed=1), 10)
    assert sorted(single) == list(range(10))
    assert single[0::2] == first_epoch[:5] and single[1::2] == first_epoch[5:]
    assert _take(PackedSampler(10, seed=2), 10) != single


def test_state_dict_resumes_the_stream_exactly() -> None:
    sampler = PackedSampler(7, rank=1, world_size=3, seed=5)
    before = _take(sampler, 4)
    state = sampler.state_dict()
    assert state == {"samples_seen": 12, "seed": 5, "num_sequences": 7}
    after = _take(sampler, 9)  # crosses epochs
    restored = PackedSampler(7, rank=1, world_size=3, seed=5)
    restored.load_state_dict(state)
    assert _take(restored, 9) == after
    assert _take(PackedSampler(7, rank=1, world_size=3, seed=5), 13) == before + after
    with pytest.raises(ConfigError, match="num_sequences"):
        PackedSampler(8, seed=5).load_state_dict(state)


def test_world_size_can_change_on_resume() -> None:
    """A checkpoint at stream position p resumes at any world size: together the new ranks read
    exactly the positions p, p+1, ... that one rank would have read."""
    one = PackedSampler(11, seed=3, samples_seen=6)
    expected = _take(one, 8)
    two = [PackedSampler(11, rank=r, world_size=2, seed=3, samples_seen=6) for r in range(2)]
    got = [i for pair in zip(_take(two[0], 4), _take(two[1], 4), strict=True) for i in pair]
    assert got == expected


def test_dataloader_over_packed_sequences(tmp_path: Path) -> None:
    pack = write_pack_dir(tmp_path / "pack", {"train": [np.arange(10, 60)]}, vocab_size=100)
    ds = PackedSequences(pack, "train", seq_len=6)  # 51 tokens -> 12 windows of 4
    sampler = PackedSampler(len(ds), seed=0)
    loader = iter(DataLoader(ds, batch_size=4, sampler=sampler))
    first = [next(loader) for _ in range(2)]
    assert first[0].shape == (4, 6)
    resumed = PackedSampler(len(ds), seed=0)
    resumed.load_state_dict({"samples_seen": 4})  # one batch consumed
    again = next(iter(DataLoader(ds, batch_size=4, sampler=resumed)))
    assert torch.equal(again, first[1])


def test_same_order_as_the_training_loop() -> None:
    from plm_core.train.loop import Pretrainer

    class Stub:
        """Just what ``Pretrainer.train_indices`` reads."""

        def __init__(self, rank: int, world: int) -> None:
            self.cfg = type("Cfg", (), {"batch_size": 5, "seed": 9})()
            self.train_data = range(13)
            self.rank, self.world_size = rank, world
            self._orders: dict[int, torch.Tensor] = {}

        _epoch_order = Pretrainer._epoch_order
        train_indices = Pretrainer.train_indices

    for rank in range(2):
        loop = Stub(rank, 2)
        sampler = iter(PackedSampler(13, rank=rank, world_size=2, seed=9))
        for step in range(6):  # crosses two epoch boundaries
            expected = loop.train_indices(step * 5 * 2).tolist()
            assert [next(sampler) for _ in range(5)] == expected
