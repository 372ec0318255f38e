"""BART's denoising corruption (Lewis et al. 2020, section 2.2): sentence permutation, then text
infilling; the decoder reconstructs the original sequence.

Text infilling: span lengths are drawn from Poisson(``poisson_lambda``) until they add up to
``ceil(mask_ratio * L)`` tokens (the last one trimmed to fit, as fairseq does); each span becomes
one [MASK] in the input, so the model must also infer how many tokens are missing, and a
0-length span inserts a [MASK] where nothing is missing. Unlike fairseq, spans never overlap:
the kept tokens and the spans are laid out as a random interleaving, which makes the masked
fraction exactly the budget instead of "at most". Spans cover tokens, not whole words (fairseq's
BART masks whole words; here every SentencePiece piece is a unit), and a span is always [MASK]
(fairseq replaces 10% of spans with a random token).

Sentence permutation: a sentence ends at a token in ``sentence_end_ids`` (``sentence_end_ids``
below picks the pieces whose text ends in ``.``, ``!`` or ``?``); the tokens after the last end
form a sentence of their own. The sentences are shuffled as units.

Rows are corrupted one at a time (their corrupted lengths differ), with tensor operations inside
a row, and padded into a batch: ``<s> noised </s>`` inputs, ``<s> original </s>`` labels.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

import torch
from torch.nn.utils.rnn import pad_sequence

from plm_core.errors import ConfigError
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.tokenizer import Tokenizer

SENTENCE_END_CHARS = (".", "!", "?")


def sentence_end_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids of the pieces that end a sentence: non-special pieces whose last character is . ! or ?
    (``.``, ``▁.``, ``etc.`` alike). The last character decides, so a piece like ``."`` leaves the
    sentence open until the next end: a rare merge, and a longer unit is harmless to shuffle."""
    return frozenset(
        i
        for i in range(tokenizer.vocab_size)
        if i not in tokenizer.special_ids and tokenizer.id_to_piece(i).endswith(SENTENCE_END_CHARS)
    )


def shuffle_sentences(
    ids: torch.Tensor, sentence_ends: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``ids`` [L] with its sentences in a random order -> [L]; ``sentence_ends`` holds the ids
    that end a sentence."""
    L = ids.numel()
    is_end = torch.isin(ids, sentence_ends)
    is_end[-1] = True  # a trailing fragment without an end is a sentence too
    sentence = torch.cat([is_end.new_zeros(1), is_end[:-1]]).long().cumsum(0)  # [L] sentence of each token
    num_sentences = int(sentence[-1]) + 1
    rank = torch.empty(num_sentences, dtype=torch.long)
    rank[torch.randperm(num_sentences, generator=generator)] = torch.arange(num_sentences)  # new place
    # Sort tokens by (new place of their sentence, old position): sentences move, each stays intact.
    return ids[(rank[sentence] * L + torch.arange(L)).argsort()]


def text_infilling(
    ids: torch.Tensor,
    *,
    mask_id: int,
    mask_ratio: float,
    poisson_lambda: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``ids`` [L] -> [L'] with ``ceil(mask_ratio * L)`` tokens in Poisson-length spans, each span
    replaced by one ``mask_id``."""
    L = ids.numel()
    budget = math.ceil(L * mask_ratio)
    if budget == 0:
        return ids.clone()
    rates = torch.full((budget,), float(poisson_lambda))
    lengths = torch.poisson(rates, generator=generator).long()
    while int(lengths.sum()) < budget:  # rare with lambda >= 1: a budget's worth of draws fell short
        lengths = torch.cat([lengths, torch.poisson(rates, generator=generator).long()])
    cumulative = lengths.cumsum(0)
    last = int(torch.searchsorted(cumulative, budget))  # first span that reaches the budget
    lengths = lengths[: last + 1]
    lengths[last] = budget - (int(cumulative[last - 1]) if last > 0 else 0)  # trim it to fit
    # Lay the kept tokens and the spans out as one random sequence of items: a span item consumes
    # its length of tokens and emits one [MASK]; a kept item consumes and emits its token.
    num_items = L - budget + lengths.numel()
    is_span = torch.zeros(num_items, dtype=torch.bool)
    is_span[torch.randperm(num_items, generator=generator)[: lengths.numel()]] = True
    consumed = torch.ones(num_items, dtype=torch.long)
    consumed[is_span] = lengths  # the spans in their drawn order
    first_token = (consumed.cumsum(0) - consumed).clamp(max=L - 1)  # [items]
    return torch.where(is_span, mask_id, ids[first_token])


def denoising(
    sequences: Iterable[torch.Tensor],
    *,
    mask_id: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    sentence_end_ids: Collection[int],
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    permute_sentences: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Token rows (a [B, L] batch, or 1-D tensors of any lengths) -> {"input_ids" [B, Li] padded
    with ``pad_id``, "attention_mask" [B, Li], "labels" [B, Lt] padded with -100}.

    Inputs are ``<s> corrupted </s>``, labels ``<s> original </s>``: the model shifts the labels
    right behind its decoder start (</s>) to form the decoder input, as BART does. ``generator``
    (on CPU) makes a resumed run draw the same corruption.
    """
    if not 0.0 <= mask_ratio < 1.0 or poisson_lambda <= 0.0:
        raise ConfigError(
            f"denoising needs 0 <= mask_ratio < 1 and poisson_lambda > 0, got {mask_ratio}, {poisson_lambda}"
        )
    ends = torch.as_tensor(sorted(sentence_end_ids), dtype=torch.long)
    bos, eos = torch.tensor([bos_id]), torch.tensor([eos_id])
    inputs, labels = [], []
    for row in sequences:
        row = row.cpu().long()
        noised = shuffle_sentences(row, ends, generator) if permute_sentences else row
        noised = text_infilling(
            noised, mask_id=mask_id, mask_ratio=mask_ratio, poisson_lambda=poisson_lambda, generator=generator
        )
        inputs.append(torch.cat([bos, noised, eos]))
        labels.append(torch.cat([bos, row, eos]))
    input_ids = pad_sequence(inputs, batch_first=True, padding_value=pad_id)  # [B, Li]
    lengths = torch.tensor([len(x) for x in inputs])
    attention_mask = (torch.arange(input_ids.size(1))[None, :] < lengths[:, None]).long()  # [B, Li]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),  # [B, Lt]
    }
