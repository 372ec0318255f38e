"""Post-training dynamic int8 quantization for CPU inference.

``torch.ao.quantization.quantize_dynamic`` swaps every ``nn.Linear`` for a module that stores int8
weights (per-tensor scale) and quantizes activations on the fly per batch, so it needs no
calibration data and no retraining. The attention projections, feed-forward and pooler/classifier
matmuls are where a transformer's CPU time goes; embeddings, LayerNorm and softmax stay fp32.

The model directory keeps the fp32 safetensors weights (the contract every stage reads) and the
predictor quantizes at load time when asked: a quantized state dict holds packed
``torch._C.ScriptObject`` parameters that safetensors cannot store, and quantizing a small model
takes milliseconds, so a second, int8, weights file would buy nothing.

torch 2.10+ marks the eager ``torch.ao.quantization`` API as deprecated in favour of torchao, but
it is what ships with torch itself and runs on every CPU backend here (x86/fbgemm, qnnpack); the
deprecation warnings are silenced around the one call so that serving logs stay readable.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear


def quantize_dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (eval mode, CPU) whose ``nn.Linear`` layers run int8 dynamic quantized.

    Tied weights need no care here: ``nn.Linear`` modules are replaced, their weight tensors are
    quantized copies, and embeddings (which an MLM head may share) are left as they are.
    """
    target = model if inplace else copy.deepcopy(model)
    target = target.to("cpu").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.ao.quantization.quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)


def count_quantized_linears(model: nn.Module) -> int:
    """How many Linear layers run quantized (a check that quantization actually happened)."""
    return sum(1 for m in model.modules() if isinstance(m, DynamicQuantizedLinear))


def serialized_linear_bytes(model: nn.Module) -> int:
    """Bytes the weights of the model take: fp32 tensors at 4 bytes, packed int8 Linear weights at
    1 byte plus fp32 bias; used to report the int8 model's size next to the fp32 one."""
    total = 0
    quantized_prefixes = []
    for name, module in model.named_modules():
        if isinstance(module, DynamicQuantizedLinear):
            weight, bias = module._packed_params._weight_bias()
            total += weight.numel() + (0 if bias is None else bias.numel() * 4)
            quantized_prefixes.append(name + ".")
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if not torch.is_tensor(tensor) or any(name.startswith(p) for p in quantized_prefixes):
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total
