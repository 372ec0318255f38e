"""Masked-language-model corruptions of the encoder family: BERT's token masking, whole-word
masking and SpanBERT's span masking.

All three choose positions to predict (~``probability`` of the non-special tokens) and corrupt
them as BERT does (Devlin et al. 2019, section 3.1): 80% become ``[MASK]``, 10% a random token,
10% stay themselves; only selected positions carry a label. Unlike HF's collator, the random
replacement never draws a special token: a stray ``[CLS]`` or ``[SEP]`` in the middle of a
sequence is noise the model would learn to predict for nothing.

Words are SentencePiece's: a piece that starts with the word-boundary marker "▁" begins a word,
the following pieces without it continue it (``word_start_mask`` builds the per-vocabulary flag).
A special token is a word of its own and never selected, so no word runs across one.

Every function draws from ``generator``, which must live on ``input_ids``' device; the training
loop masks on CPU in the data path with a per-step generator, which makes a resumed run draw the
same masks.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import sentencepiece as spm
import torch

from plm_core.errors import ConfigError
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.tokenizer import Tokenizer

MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1  # the remaining 0.1 keep their original token
WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's marker of a preceding space


def word_start_mask(tokenizer: Tokenizer | spm.SentencePieceProcessor) -> torch.Tensor:
    """[V] bool: True where the piece begins a word ("▁" prefix) or is a control / unknown piece
    (a word of its own); False for pieces that continue a word, byte-fallback pieces included."""
    sp = tokenizer.sp if isinstance(tokenizer, Tokenizer) else tokenizer
    ids = list(range(sp.get_piece_size()))
    starts = [piece.startswith(WORD_BOUNDARY) for piece in sp.id_to_piece(ids)]
    own_word = [c or u for c, u in zip(sp.is_control(ids), sp.is_unknown(ids), strict=True)]
    return torch.tensor(starts) | torch.tensor(own_word)


def _is_special(input_ids: torch.Tensor, special_ids: Collection[int]) -> torch.Tensor:
    specials = torch.tensor(sorted(special_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, specials)  # [..., T]


def _corrupt(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    action: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 on the ``selected`` positions; ``action`` [...] in [0, 1) picks which of the
    three (equal within a span when drawn per span). Returns (corrupted inputs, labels)."""
    device = input_ids.device
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    to_mask = selected & (action < MASK_FRACTION)
    to_random = selected & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)

    allowed = torch.arange(vocab_size, device=device)
    allowed = allowed[~_is_special(allowed, special_ids)]  # [V - specials]
    draws = torch.randint(len(allowed), input_ids.shape, generator=generator, device=device)
    corrupted = torch.where(to_mask, mask_id, input_ids)
    corrupted = torch.where(to_random, allowed[draws].to(input_ids.dtype), corrupted)
    return corrupted, labels


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT: each non-special token is selected independently with ``probability``.

    ``input_ids`` [...] -> (corrupted inputs [...], labels [...] with -100 where not selected).
    """
    device = input_ids.device
    selected = torch.rand(input_ids.shape, generator=generator, device=device) < probability
    selected &= ~_is_special(input_ids, special_ids)
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    return _corrupt(
        input_ids,
        selected,
        action,
        mask_id=mask_id,
        vocab_size=vocab_size,
        special_ids=special_ids,
        generator=generator,
    )


def word_starts(input_ids: torch.Tensor, word_start: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """[..., T] bool: where a word begins. The first position of a row, every special token and
    the token after one begin a word, whatever their piece says (a window may start mid-word)."""
    starts = word_start.to(input_ids.device)[input_ids] | special  # [..., T]
    starts[..., 0] = True
    starts[..., 1:] |= special[..., :-1]
    return starts


def mask_whole_words(
    input_ids: torch.Tensor,
    *,
    word_start: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking (BERT's 2019 release): each word is selected with ``probability`` and all
    its pieces with it, so the expected share of selected tokens is still ``probability``; the
    80/10/10 choice stays per piece, as in the original ``create_pretraining_data.py``.

    ``input_ids`` [..., T]; ``word_start`` [V] bool from ``word_start_mask``.
    """
    device = input_ids.device
    special = _is_special(input_ids, special_ids)  # [..., T]
    # Row starts are word starts, so a running count over the flattened batch never joins rows.
    word = word_starts(input_ids, word_start, special).flatten().cumsum(0).view(input_ids.shape) - 1
    chosen = torch.rand(int(word.max()) + 1, generator=generator, device=device) < probability  # [words]
    selected = chosen[word] & ~special  # [..., T]
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    return _corrupt(
        input_ids,
        selected,
        action,
        mask_id=mask_id,
        vocab_size=vocab_size,
        special_ids=special_ids,
        generator=generator,
    )


def span_length_distribution(geometric_p: float, max_span_length: int) -> torch.Tensor:
    """[max_span_length] float64: P(span = l words), l = 1..max, of SpanBERT's Geometric(p) clipped
    at ``max_span_length`` -- truncated and renormalised as in SpanBERT's code, which gives the
    paper's mean of 3.8 words at p = 0.2, max = 10 (piling the tail onto max would give 4.5)."""
    if not 0.0 < geometric_p <= 1.0 or max_span_length < 1:
        raise ConfigError(
            f"span masking needs 0 < span_geometric_p <= 1 and max_span_length >= 1, "
            f"got {geometric_p} and {max_span_length}"
        )
    lengths = torch.arange(1, max_span_length + 1, dtype=torch.float64)
    pmf = geometric_p * (1.0 - geometric_p) ** (lengths - 1)
    return pmf / pmf.sum()


def mask_spans(
    input_ids: torch.Tensor,
    *,
    word_start: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    probability: float = 0.15,
    geometric_p: float = 0.2,
    max_span_length: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SpanBERT span masking (Joshi et al. 2020): spans of whole words with lengths from
    ``span_length_distribution``; each span is corrupted as a unit (all [MASK], all random tokens
    or all kept: 80/10/10 per span).

    SpanBERT samples spans one at a time until 15% of a sequence is masked. Here each row's words
    (specials skipped) are covered by alternating spans and gaps -- a renewal process started in
    its stationary state -- with gaps ~ Geometric on {1, 2, ...} whose mean makes the covered share
    exactly ``probability`` at every word. That keeps what the objective needs (span lengths follow
    the configured distribution, ~15% of tokens, no partial words) and adds: no overshoot from the
    last span, no position bias, spans that never touch (so each masked run is one span), and a
    whole batch drawn with a few tensor ops instead of a Python loop per span. The price: the
    share varies more from row to row, and a row's ends may cut a span. A span may continue
    across a special token (a document's [SEP]); the special itself is never selected.

    ``input_ids`` [B, T]; ``word_start`` [V] bool from ``word_start_mask``.
    """
    device = input_ids.device
    B, T = input_ids.shape
    length_pmf = span_length_distribution(geometric_p, max_span_length).to(device)  # [L]
    mean_span = float((length_pmf * torch.arange(1, max_span_length + 1, device=device)).sum())
    mean_gap = mean_span * (1.0 - probability) / probability if 0.0 < probability < 1.0 else 0.0
    if mean_gap < 1.0:
        raise ConfigError(
            f"mlm_probability {probability} is out of reach for spans of mean {mean_span:.2f} words "
            "separated by at least one word"
        )
    special = _is_special(input_ids, special_ids)  # [B, T]
    # Index of each token's word within its row, specials skipped (leading specials get -1).
    word = (word_starts(input_ids, word_start, special) & ~special).cumsum(-1) - 1  # [B, T]

    K = T // 2 + 1  # (span, gap) pairs; each covers >= 2 words, so K pairs cover any row
    spans = torch.multinomial(length_pmf, B * K, replacement=True, generator=generator).view(B, K) + 1
    # Stationary start: word 0 lies inside a span with probability ``probability``, and then the
    # span's remaining length r has P(r) = P(length >= r) / mean length (renewal theory).
    residual_pmf = length_pmf.flip(0).cumsum(0).flip(0) / mean_span  # [L]
    residual = torch.multinomial(residual_pmf, B, replacement=True, generator=generator) + 1  # [B]
    inside = torch.rand(B, generator=generator, device=device, dtype=torch.float64) < probability
    spans[:, 0] = torch.where(inside, residual, 0)
    # Gaps ~ Geometric(1 / mean_gap) on {1, 2, ...} by inversion; memoryless, so a row starting
    # in a gap needs no residual distribution of its own.
    uniform = 1.0 - torch.rand((B, K), generator=generator, device=device, dtype=torch.float64)  # (0, 1]
    gaps = 1 + torch.floor(torch.log(uniform) / math.log1p(-1.0 / mean_gap)).long()  # [B, K]
    ends = torch.stack([spans, gaps], dim=-1).view(B, 2 * K).cumsum(-1)  # [B, 2K] interval ends
    interval = torch.searchsorted(ends, word.clamp(min=0), right=True)  # [B, T] even = in a span
    selected = (interval % 2 == 0) & ~special  # [B, T]

    span_action = torch.rand((B, K), generator=generator, device=device)  # one 80/10/10 draw per span
    action = span_action.gather(1, interval // 2)  # [B, T]
    return _corrupt(
        input_ids,
        selected,
        action,
        mask_id=mask_id,
        vocab_size=vocab_size,
        special_ids=special_ids,
        generator=generator,
    )
