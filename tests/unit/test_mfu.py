"""MFU arithmetic against hand-computed values, and the peak table lookup by CUDA device name."""

from __future__ import annotations

import pytest

from plm_core.train.mfu import flops_per_token, mfu, peak_flops_for


def test_flops_per_token_of_gpt2_124m():
    # 6 x 124,439,808 = 746,638,848 (weights, forward + backward); 12 x 12 x 768 x 1024 = 113,246,208
    # (attention scores and values at T = 1024). N is GPT-2 124M's count, which our base decoder
    # matches exactly (tests/unit/test_decoder.py).
    assert flops_per_token(124_439_808, 12, 768, 1024) == 859_885_056


def test_mfu_by_hand():
    # 100k tokens/s at 859.9 MFLOP/token on 2 H100s: 8.6e13 / 1.978e15.
    assert mfu(100_000, 859_885_056, 2, 989e12) == pytest.approx(100_000 * 859_885_056 / (2 * 989e12))
    assert mfu(100_000, 859_885_056, 2, 989e12) == pytest.approx(0.04347, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # the SXM part
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("Tesla T4", None),
    ],
)
def test_peak_lookup(name: str, peak: float | None):
    assert peak_flops_for(name) == peak
