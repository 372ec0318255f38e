"""Parameter-efficient fine-tuning (LoRA, IA3 "adapters") of our own models with HF ``peft``.

``peft`` works on any ``nn.Module``: ``target_modules`` names the ``nn.Linear`` layers to adapt and
``modules_to_save`` the task head, which is trained in full (a fresh head has nothing to adapt).
Our bodies name their Linear layers alike in every family (``encoder.layers.{i}.attn.{query,key,
value,out}``, ``encoder.layers.{i}.ffn.{up,gate,down}``), so one regex targets BERT, GPT and T5.

method="adapter" is IA3 (Liu et al. 2022: learned rescaling of keys, values and the feed-forward's
inner activations), not a Houlsby/Pfeiffer bottleneck adapter: ``peft`` has no bottleneck adapters
for custom modules, and a bottleneck with a nonlinearity cannot be folded back into the Linear
weights, so the served model would stop being the plain model directory every stage reads
(docs/contracts.md). IA3, like LoRA, merges exactly into the weights it scales.

After training, ``merge`` folds the adapter into the base weights and returns the plain model the
fine-tuned directory stores; ``save_adapter`` also writes the small adapter on its own
(``adapter/adapter_model.safetensors`` + ``adapter_config.json``, peft's format).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from plm_core.config import FinetuneConfig
from plm_core.errors import ConfigError

METHODS = ("full", "lora", "adapter")
ADAPTER_DIR = "adapter"

# Full module names, anchored (peft fullmatches a string target against each module name).
ATTENTION_AND_FFN = r"encoder\.layers\.\d+\.(attn\.(query|key|value|out)|ffn\.(up|gate|down))"
# LoRA on the token embeddings (peft supports nn.Embedding): the sentiment of a word lives in its
# embedding, and a lightly pretrained body's [CLS] state barely depends on the other tokens, so
# without adapting the embeddings LoRA on such a body cannot move off the majority class (measured
# on SST-2 with the tiny preset; docs/benchmarks.md). Costs r * (V + H) parameters.
WORD_EMBEDDINGS = r"encoder\.embeddings\.word"
IA3_TARGETS = r"encoder\.layers\.\d+\.(attn\.(key|value)|ffn\.down)"
IA3_FEEDFORWARD = r"encoder\.layers\.\d+\.ffn\.down"  # IA3 scales this layer's input, not its output


@dataclass
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "trainable_parameters": self.trainable,
            "total_parameters": self.total,
            "trainable_fraction": self.fraction,
        }


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters, each shared tensor once (tied embeddings count once).

    For a peft model the total includes the frozen base and the adapter, and the head's frozen
    original copy that ``modules_to_save`` keeps is left out so the fraction is against the
    served model's size plus the adapter.
    """
    trainable = total = 0
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or ".original_module." in name:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return ParameterCount(trainable, total)


def head_modules(model: nn.Module) -> list[str]:
    """The task head's leaf modules with parameters (everything outside the body: pooler dense,
    classifier / qa_outputs), trained in full. Leaves rather than the head's top modules because
    peft's IA3 merge only unwraps ``modules_to_save`` that hold their own weight."""
    names = []
    for name, module in model.named_modules():
        if not name or name.split(".")[0] == "encoder":
            continue
        if any(True for _ in module.parameters(recurse=False)):
            names.append(name)
    return names


def apply_peft(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Wrap ``model`` for ``cfg.method`` ("lora" or "adapter"); "full" returns it unchanged.

    Only the adapter and the head are trainable afterwards; the body's weights are frozen.
    """
    if cfg.method not in METHODS:
        raise ConfigError(f"finetune.method {cfg.method!r}; choose one of {list(METHODS)}")
    if cfg.method == "full":
        return model
    from peft import IA3Config, LoraConfig, get_peft_model  # training only; serving loads merged weights

    save = head_modules(model)
    if cfg.method == "lora":
        if cfg.lora_r < 1:
            raise ConfigError(f"finetune.lora_r must be >= 1, got {cfg.lora_r}")
        config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=f"({ATTENTION_AND_FFN}|{WORD_EMBEDDINGS})"
            if cfg.lora_embeddings
            else ATTENTION_AND_FFN,
            modules_to_save=save,
            bias="none",
        )
    else:
        config = IA3Config(
            target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD, modules_to_save=save
        )
    return get_peft_model(model, config)


def is_peft_model(model: nn.Module) -> bool:
    # Importing peft pulls in transformers (seconds); a model can only be a PeftModel once it is.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merge(model: nn.Module) -> nn.Module:
    """The plain model with the adapter folded into its weights and the trained head in place
    (a model that is not a peft model is returned as it is)."""
    if not is_peft_model(model):
        return model
    merged = model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def save_adapter(model: nn.Module, out_dir: Path) -> Path:
    """peft's adapter files (safetensors) under ``out_dir/adapter``; call before ``merge``."""
    target = Path(out_dir) / ADAPTER_DIR
    model.save_pretrained(str(target), safe_serialization=True)
    return target
