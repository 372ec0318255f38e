"""T5 span corruption: configured statistics over a million tokens, exact reconstruction, T5's
mask distribution and its length arithmetic."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from plm_core.errors import ConfigError
from plm_core.objectives.span_corruption import (
    random_spans_noise_mask,
    raw_length_for_inputs,
    span_corruption,
    span_corruption_lengths,
)

torch.set_num_threads(1)

SENTINELS = list(range(7, 207))  # <extra_id_0..199> right after the fixed special ids
EOS = 6
FIRST_WORD = 300  # ordinary tokens are >= this, so they never collide with sentinels


def _rows(B: int, L: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(FIRST_WORD, 8000, (B, L), generator=torch.Generator().manual_seed(seed))


def _reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    """Undo the corruption of one row: each input sentinel becomes the target span behind it."""
    sentinels, spans, current = set(SENTINELS), {}, None
    for tok in targets[: targets.index(EOS)]:
        if tok in sentinels:
            current = spans.setdefault(tok, [])
        else:
            current.append(tok)
    out: list[int] = []
    for tok in inputs[: inputs.index(EOS)]:
        out.extend(spans[tok] if tok in sentinels else [tok])
    return out


@pytest.mark.parametrize("density, mean_span", [(0.15, 3.0), (0.3, 8.0), (0.5, 2.0)])
def test_density_and_mean_span_length_match_the_configuration_over_a_million_tokens(density, mean_span):
    B, L = 2048, 512  # 1,048,576 tokens
    out = span_corruption(
        _rows(B, L),
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        noise_density=density,
        mean_noise_span_length=mean_span,
        generator=torch.Generator().manual_seed(0),
    )
    labels = out["labels"]
    is_sentinel = labels < FIRST_WORD
    noise_tokens = int((~is_sentinel).sum())
    spans = int((is_sentinel & (labels != EOS)).sum())
    assert abs(noise_tokens / (B * L) - density) <= 0.05 * density
    assert abs(noise_tokens / spans - mean_span) <= 0.05 * mean_span
    # The input keeps every other token and adds one sentinel per span: nothing lost, nothing extra.
    assert out["input_ids"].numel() == B * L - noise_tokens + spans + B


@pytest.mark.parametrize("L", [2, 7, 33, 100, 568])
def test_inputs_and_targets_reconstruct_the_original_exactly(L):
    rows = _rows(64, L, seed=L)
    out = span_corruption(
        rows, sentinel_ids=SENTINELS, eos_id=EOS, generator=torch.Generator().manual_seed(1)
    )
    assert (out["input_ids"].shape[1], out["labels"].shape[1]) == span_corruption_lengths(L, 0.15, 3.0)
    for row, inputs, targets in zip(rows, out["input_ids"], out["labels"], strict=True):
        assert _reconstruct(inputs.tolist(), targets.tolist()) == row.tolist()
        used = [t for t in inputs.tolist() if t in SENTINELS]
        assert used == SENTINELS[: len(used)]  # sentinels in order, each once


def test_every_mask_t5_allows_is_equally_likely():
    # length 10, 3 noise tokens in 2 spans: 7 non-noise tokens split 2 ways (6 ways) x 3 noise
    # tokens split 2 ways (2 ways) = 12 masks, always starting with non-noise and ending with noise.
    masks = random_spans_noise_mask(10, 0.3, 1.5, batch=24_000, generator=torch.Generator().manual_seed(0))
    assert masks.sum(dim=1).eq(3).all()
    assert masks[:, -1].all() and not masks[:, 0].any()
    counts = Counter(tuple(m) for m in masks.int().tolist())
    assert len(counts) == 12
    assert all(abs(c - 2000) < 200 for c in counts.values())


def test_lengths_follow_t5s_arithmetic():
    assert span_corruption_lengths(568, 0.15, 3.0) == (512, 114)  # T5's published setting
    assert raw_length_for_inputs(512, 0.15, 3.0) == 568
    for inputs_length in (64, 128, 200):
        raw = raw_length_for_inputs(inputs_length, 0.15, 3.0)
        assert span_corruption_lengths(raw, 0.15, 3.0)[0] == inputs_length
        assert span_corruption_lengths(raw + 1, 0.15, 3.0)[0] > inputs_length


def test_same_generator_seed_same_corruption_and_bad_settings_are_config_errors():
    rows = _rows(4, 50)
    a, b = (
        span_corruption(rows, sentinel_ids=SENTINELS, eos_id=EOS, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    )
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    with pytest.raises(ConfigError, match="sentinels"):
        span_corruption(_rows(2, 512), sentinel_ids=SENTINELS[:10], eos_id=EOS)
    with pytest.raises(ConfigError, match="noise_density"):
        random_spans_noise_mask(100, 1.5, 3.0)
