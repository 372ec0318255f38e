"""Text generation from a pretrained decoder (GPT) directory: what the LM pyfunc serves.

The directory is a decoder pretrain stage's output (``model.safetensors`` + ``config.json``) with
a ``tokenizer/`` beside the weights, which the registry adds when it logs the model, so the
logged artifact is self-contained. Prompts are framed as in pretraining (``plm_core.objectives.clm``):
a leading ``[CLS]`` plays the beginning-of-sequence token and ``[SEP]`` ends a document, so
generation stops at ``[SEP]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from plm_core.errors import InputError
from plm_core.generate import generate
from plm_core.models.decoder import GPTForCausalLM
from plm_core.models.io import load_config, load_weights
from plm_core.tokenizer import Tokenizer

TOKENIZER_DIR = "tokenizer"


class LmPredictor:
    """Loads a decoder directory once; ``generate`` continues raw prompts."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        cfg, extra = load_config(self.model_dir)
        if cfg.family != "decoder":
            raise InputError(
                self.model_dir / "config.json",
                f"model family is {cfg.family!r}; text generation needs 'decoder'",
            )
        if not (self.model_dir / TOKENIZER_DIR).is_dir():
            raise InputError(self.model_dir / TOKENIZER_DIR, "missing; the LM directory needs its tokenizer")
        self.cfg = cfg
        self.tokenizer = Tokenizer.load(self.model_dir / TOKENIZER_DIR)
        self.model = GPTForCausalLM(cfg)
        load_weights(self.model, self.model_dir)
        self.model.eval()

    def _prompt_ids(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """``[CLS] + prompt`` ids, keeping the prompt's end when it and the continuation overflow."""
        budget = self.cfg.max_position - max_new_tokens - 1
        if budget < 1:
            raise InputError(
                self.model_dir / "config.json",
                f"max_new_tokens {max_new_tokens} leaves no room for a prompt in max_position "
                f"{self.cfg.max_position}",
            )
        return [[self.tokenizer.cls_id, *ids[-budget:]] for ids in self.tokenizer.encode(list(prompts))]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_beams: int = 1,
        seed: int = 0,
    ) -> list[str]:
        """The continuation of each prompt (without the prompt), in input order.

        Prompts are left-padded into one batch; positions count real tokens only, so padding
        does not shift them. ``seed`` makes sampling reproducible per call.
        """
        if not prompts:
            return []
        sequences = self._prompt_ids(prompts, int(max_new_tokens))
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_id
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
        generator = torch.Generator().manual_seed(int(seed)) if do_sample else None
        out = generate(
            self.model,
            input_ids,
            mask,
            max_new_tokens=int(max_new_tokens),
            eos_id=self.tokenizer.sep_id,
            pad_id=pad,
            do_sample=bool(do_sample),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            num_beams=int(num_beams),
            generator=generator,
        )
        return [self.tokenizer.decode(row.tolist()) for row in out[:, width:]]
