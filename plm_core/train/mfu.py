"""Model FLOP utilisation: achieved training FLOP/s over the accelerator's bf16 dense peak.

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): ``6·N`` for the forward and
backward matmuls over the N parameters plus ``12·L·d·T`` for attention scores and values
(L layers, width d, sequence T). The convention counts the full output projection even when the
sparse MLM head computes it only on masked positions, so our MFU and HF's are on the same scale;
the sparse head then shows up as *higher* MFU for the same model, which is its point.
"""

from __future__ import annotations

from torch import nn

# Dense bf16 tensor-core peak per device, FLOP/s (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 70e12,
    "L4": 121e12,
    "L40S": 362e12,
}


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·d·T``."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def count_params(model: nn.Module) -> int:
    """Trainable parameters, a tied weight counted once (``parameters()`` deduplicates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peak_flops_for(device_name: str) -> float | None:
    """The bf16 peak of a device named like ``torch.cuda.get_device_name()``, or None if unknown.

    Longest key first, so "NVIDIA H100 80GB HBM3" (an SXM part) is told from "H100 PCIe";
    a bare "H100" is taken as the SXM part.
    """
    name = device_name.upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_BF16_FLOPS[key]
    if "H100" in name:
        return PEAK_BF16_FLOPS["H100 SXM"]
    return None


def device_peak_flops(configured: float = 0.0) -> float | None:
    """``configured`` if set, else the current CUDA device's peak; None on CPU (no meaningful peak)."""
    if configured > 0:
        return configured
    import torch

    if torch.cuda.is_available():
        return peak_flops_for(torch.cuda.get_device_name())
    return None


def mfu(tokens_per_second: float, flops_token: float, n_devices: int, peak: float) -> float:
    """Fraction of ``n_devices`` x ``peak`` that ``tokens_per_second`` (over all devices) achieves."""
    return tokens_per_second * flops_token / (n_devices * peak)
