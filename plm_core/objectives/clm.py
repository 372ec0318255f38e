"""Causal language modelling (GPT): predict every next token.

The batch is the packed sequences themselves: labels equal the inputs, and ``GPTForCausalLM``
shifts them inside (position t is scored on token t + 1), so the data path stays the same as for
MLM minus the corruption.

Packing for the decoder: ``PackedSequences`` cuts the token stream into fixed windows framed as
``[CLS] + window + [SEP]``, and inside a window several documents follow one another, each ended
by its own ``sep_id`` -- which plays the decoder's end-of-text token, as ``<|endoftext|>`` does for
GPT-2 -- and the leading ``[CLS]`` plays a beginning-of-sequence token. Attention is not cut at
document boundaries: as in GPT-2/GPT-3 pretraining, the model learns from the separator that
what follows is unrelated, and no position is padding. The cost is that the first tokens after
a separator are predicted with an unrelated document in context, a small fraction of the loss.
"""

from __future__ import annotations

import torch


def causal_lm_batch(sequences: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sequences`` [B, T] -> {"input_ids" [B, T], "labels" [B, T]}.

    ``labels`` is a copy, so marking positions with -100 later (padding, prompts) never edits
    the inputs.
    """
    return {"input_ids": sequences, "labels": sequences.clone()}
