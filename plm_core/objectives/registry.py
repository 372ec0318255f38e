"""Pretraining objectives by name: which family trains with which, and the batch builder of each.

A collator turns a batch of packed sequences ``[B, T]`` (``PackedSequences`` rows, ``[CLS] ...
[SEP]``) and a ``torch.Generator`` into the keyword arguments of the family's pretraining model,
so the training loop is the same for every objective: ``model(**collate(ids, generator))``.
Collators are ``functools.partial`` objects of module-level functions, so they pickle (Ray
workers, DataLoader processes).
The sentence objectives (NSP/SOP) build their own two-segment rows
(``plm_core.objectives.sentence_order``); an encoder collator then corrupts those.

The decoder and seq2seq objectives are imported when asked for, so an encoder run never imports
the other families' code.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import torch

from plm_core.config import PretrainConfig
from plm_core.errors import ConfigError
from plm_core.objectives.mlm import mask_spans, mask_tokens, mask_whole_words
from plm_core.objectives.sentence_order import SENTENCE_OBJECTIVES

Collator = Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]]

FAMILY_OBJECTIVES: dict[str, set[str]] = {
    "encoder": {"mlm", "wwm", "span"},
    "decoder": {"clm"},
    "seq2seq": {"span_corruption", "denoising"},
}


def check_objectives(family: str, cfg: PretrainConfig) -> None:
    """ConfigError unless ``cfg.objective`` (and ``cfg.sentence_objective``) fit the model family."""
    if family not in FAMILY_OBJECTIVES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {sorted(FAMILY_OBJECTIVES)}")
    if cfg.objective not in FAMILY_OBJECTIVES[family]:
        owner = [f for f, names in FAMILY_OBJECTIVES.items() if cfg.objective in names]
        hint = f" (it is a {owner[0]} objective)" if owner else ""
        raise ConfigError(
            f"objective {cfg.objective!r} does not train a {family} model{hint}; "
            f"choose one of {sorted(FAMILY_OBJECTIVES[family])}"
        )
    if cfg.sentence_objective and cfg.sentence_objective not in SENTENCE_OBJECTIVES:
        raise ConfigError(
            f"unknown sentence_objective {cfg.sentence_objective!r}; choose '' or one of {SENTENCE_OBJECTIVES}"
        )
    if cfg.sentence_objective and family != "encoder":
        raise ConfigError(f"sentence_objective {cfg.sentence_objective!r} needs an encoder, not {family}")


def _masking_args(tokenizer_meta: dict[str, Any], cfg: PretrainConfig) -> dict[str, Any]:
    return {
        "mask_id": int(tokenizer_meta["mask_id"]),
        "vocab_size": int(tokenizer_meta["vocab_size"]),
        "special_ids": [int(i) for i in tokenizer_meta["special_ids"]],
        "probability": cfg.mlm_probability,
    }


def _word_start(
    word_start: torch.Tensor | None, tokenizer_meta: dict[str, Any], objective: str
) -> torch.Tensor:
    if word_start is None:
        raise ConfigError(
            f"objective {objective!r} needs word_start (plm_core.objectives.mlm.word_start_mask)"
        )
    if word_start.dtype != torch.bool or word_start.numel() != int(tokenizer_meta["vocab_size"]):
        raise ConfigError(
            f"word_start must be a bool tensor of vocab_size {tokenizer_meta['vocab_size']}, "
            f"got {word_start.dtype} [{word_start.numel()}]"
        )
    return word_start


def _masked_lm(
    mask: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ids: torch.Tensor,
    generator: torch.Generator,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    inputs, labels = mask(ids, generator=generator, **kwargs)
    return {"input_ids": inputs, "labels": labels}


def _causal(
    batch: Callable[[torch.Tensor], dict[str, torch.Tensor]], ids: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    return batch(ids)  # nothing random in next-token prediction


def _seq2seq(
    corrupt: Callable[..., dict[str, torch.Tensor]],
    ids: torch.Tensor,
    generator: torch.Generator,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    return corrupt(ids, generator=generator, **kwargs)


def build_collator(
    objective: str,
    *,
    tokenizer_meta: dict[str, Any],
    cfg: PretrainConfig,
    word_start: torch.Tensor | None = None,
    sentence_end_ids: Collection[int] | None = None,
) -> Collator:
    """The batch builder of ``objective``: ``collate(ids [B, T], generator) -> dict``.

    ``tokenizer_meta`` is tokenizer.json as a dict; ``word_start`` ([V] bool, from
    ``word_start_mask``) is required by "wwm" and "span", ``sentence_end_ids`` (from
    ``plm_core.objectives.denoising.sentence_end_ids``) by "denoising" with sentence permutation;
    both come from the tokenizer's pieces, which tokenizer.json does not hold. Batches:

    - "mlm", "wwm", "span": {"input_ids" [B, T] corrupted, "labels" [B, T] (-100 = no loss)}
      for ``BertForMaskedLM`` / ``BertForPreTraining``.
    - "clm": ``causal_lm_batch``'s {"input_ids", "labels"} (the model shifts).
    - "span_corruption": {"input_ids" [B, Li], "labels" [B, Lt]} (T5: sentinels, both end in EOS).
    - "denoising": {"input_ids" [B, Li], "attention_mask" [B, Li], "labels" [B, Lt] (-100 pad)}
      (BART: ``<s> noised </s>`` / ``<s> original </s>``).
    """
    masking = _masking_args(tokenizer_meta, cfg) if objective in FAMILY_OBJECTIVES["encoder"] else {}
    if objective == "mlm":
        return partial(_masked_lm, mask_tokens, **masking)
    if objective == "wwm":
        return partial(
            _masked_lm,
            mask_whole_words,
            word_start=_word_start(word_start, tokenizer_meta, objective),
            **masking,
        )
    if objective == "span":
        return partial(
            _masked_lm,
            mask_spans,
            word_start=_word_start(word_start, tokenizer_meta, objective),
            geometric_p=cfg.span_geometric_p,
            max_span_length=cfg.max_span_length,
            **masking,
        )
    if objective == "clm":
        from plm_core.objectives.clm import causal_lm_batch

        return partial(_causal, causal_lm_batch)
    if objective == "span_corruption":
        from plm_core.objectives.span_corruption import span_corruption

        return partial(
            _seq2seq,
            span_corruption,
            sentinel_ids=[int(i) for i in tokenizer_meta["sentinel_ids"]],
            eos_id=int(tokenizer_meta["eos_id"]),
            noise_density=cfg.noise_density,
            mean_noise_span_length=cfg.mean_noise_span_length,
        )
    if objective == "denoising":
        from plm_core.objectives.denoising import denoising

        if cfg.permute_sentences and sentence_end_ids is None:
            raise ConfigError(
                "denoising with permute_sentences needs sentence_end_ids "
                "(plm_core.objectives.denoising.sentence_end_ids)"
            )
        return partial(
            _seq2seq,
            denoising,
            mask_id=int(tokenizer_meta["mask_id"]),
            pad_id=int(tokenizer_meta["pad_id"]),
            bos_id=int(tokenizer_meta["bos_id"]),
            eos_id=int(tokenizer_meta["eos_id"]),
            sentence_end_ids=sorted(sentence_end_ids or ()),
            mask_ratio=cfg.mask_ratio,
            poisson_lambda=cfg.poisson_lambda,
            permute_sentences=cfg.permute_sentences,
        )
    known = sorted(set().union(*FAMILY_OBJECTIVES.values()))
    raise ConfigError(f"unknown objective {objective!r}; choose one of {known}")
