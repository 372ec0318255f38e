"""Batched text generation for decoder-only and encoder-decoder models: greedy, sampling
(temperature, top-k, top-p) and beam search with a length penalty, with or without a KV cache.

The models it drives follow a small protocol, so generation does not care which family it runs:

- decoder-only (``GPTForCausalLM``): ``model(input_ids, attention_mask=None, past_key_values=None,
  use_cache=False) -> {"logits": [B, T, V], "past_key_values": ...}``, where ``attention_mask``
  covers cached and new positions;
- encoder-decoder (T5, BART; detected by ``hasattr(model, "encode")``):
  ``model.encode(input_ids, attention_mask) -> enc_hidden [B, S, H]``,
  ``model.decode(decoder_input_ids, enc_hidden, enc_mask, past_key_values=None, use_cache=False)
  -> {"logits": [B, T, V], "past_key_values": ...}`` and ``model.decoder_start_token_id``.

A cache is a list (one entry per layer) of tuples of tensors with the batch on dim 0; beam
search reorders it with ``index_select(0, ...)``. The model's train/eval mode is the caller's
business (call ``model.eval()`` first, or dropout makes every step random).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plm_core.errors import ConfigError

NEG_INF = float("-inf")


class _Session:
    """The model-facing half of generation: the tokens fed so far, the cache, and the next logits.

    ``tokens`` [N, L] is the decoder's whole input: the prompt plus generated tokens for a
    decoder-only model, the start token plus generated tokens for an encoder-decoder.
    """

    def __init__(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, use_cache: bool
    ) -> None:
        self.model = model
        self.use_cache = use_cache
        self.past: Any = None
        self.fed = 0  # how many leading positions of ``tokens`` the cache covers
        self.seq2seq = hasattr(model, "encode")
        if self.seq2seq:
            self.enc_hidden = model.encode(input_ids, attention_mask)  # [N, S, H]
            self.enc_mask = attention_mask  # [N, S] or None
            start = torch.full((input_ids.size(0), 1), model.decoder_start_token_id, device=input_ids.device)
            self.tokens = start  # [N, 1]
            self.mask: torch.Tensor | None = None  # decoder inputs are never padded
        else:
            self.tokens = input_ids  # [N, T]
            self.mask = attention_mask  # [N, T] or None (no padding: SDPA keeps its causal kernel)

    def next_logits(self) -> torch.Tensor:
        """Logits [N, V] (float32) for the position after ``tokens``."""
        ids = self.tokens[:, self.fed :] if self.past is not None else self.tokens
        if self.seq2seq:
            out = self.model.decode(
                ids, self.enc_hidden, self.enc_mask, past_key_values=self.past, use_cache=self.use_cache
            )
        else:
            out = self.model(
                ids, attention_mask=self.mask, past_key_values=self.past, use_cache=self.use_cache
            )
        if self.use_cache:
            self.past, self.fed = out["past_key_values"], self.tokens.size(1)
        return out["logits"][:, -1].float()

    def append(self, next_tokens: torch.Tensor) -> None:
        """Extend every row by ``next_tokens`` [N] (a real token for the attention mask)."""
        self.tokens = torch.cat([self.tokens, next_tokens[:, None]], dim=1)  # [N, L + 1]
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes row ``index[i]``: beams are expanded, reordered and pruned this way."""
        self.tokens = self.tokens.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
        if self.seq2seq:
            self.enc_hidden = self.enc_hidden.index_select(0, index)
            if self.enc_mask is not None:
                self.enc_mask = self.enc_mask.index_select(0, index)
        if self.past is not None:
            self.past = [tuple(t.index_select(0, index) for t in layer) for layer in self.past]


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering: ``logits`` [N, V] -> [N, V] with
    -inf at every token that may not be drawn.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the
    token that crosses the threshold is kept, so at least one token always remains).
    """
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
        probs = sorted_logits.softmax(dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked higher
        drop_sorted = mass_above >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, NEG_INF)
    return logits


def _greedy_or_sample(
    session: _Session,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row per step until every row has produced EOS or the budget is spent."""
    finished = torch.zeros(session.tokens.size(0), dtype=torch.bool, device=session.tokens.device)  # [N]
    for _ in range(max_new_tokens):
        logits = session.next_logits()  # [N, V]
        if do_sample:
            probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [N]
        else:
            next_tokens = logits.argmax(dim=-1)  # [N]
        next_tokens = next_tokens.masked_fill(finished, pad_id)
        session.append(next_tokens)
        finished |= next_tokens == eos_id
        if finished.all():
            break
    return session.tokens


class _Hypotheses:
    """The best ``K`` finished hypotheses of each batch item, kept sorted by normalised score.

    ``scores`` [B, K] (-inf = empty slot), ``tokens`` [B, K, M] (generated tokens, ``pad_id``
    after the end), ``lengths`` [B, K].
    """

    def __init__(self, B: int, K: int, M: int, pad_id: int, device: torch.device) -> None:
        self.K, self.M, self.pad_id = K, M, pad_id
        self.scores = torch.full((B, K), NEG_INF, device=device)
        self.tokens = torch.full((B, K, M), pad_id, dtype=torch.long, device=device)
        self.lengths = torch.zeros(B, K, dtype=torch.long, device=device)

    def add(self, tokens: torch.Tensor, scores: torch.Tensor, accept: torch.Tensor) -> None:
        """Offer candidates ``tokens`` [B, N, L] with normalised ``scores`` [B, N] where ``accept``."""
        B, N, L = tokens.shape
        padded = torch.full((B, N, self.M), self.pad_id, dtype=torch.long, device=tokens.device)
        padded[:, :, :L] = tokens
        all_scores = torch.cat([self.scores, scores.masked_fill(~accept, NEG_INF)], dim=1)  # [B, K+N]
        all_tokens = torch.cat([self.tokens, padded], dim=1)  # [B, K+N, M]
        all_lengths = torch.cat([self.lengths, self.lengths.new_full((B, N), L)], dim=1)  # [B, K+N]
        self.scores, keep = all_scores.topk(self.K, dim=1)  # [B, K], best first
        self.tokens = all_tokens.gather(1, keep[:, :, None].expand(-1, -1, self.M))
        self.lengths = all_lengths.gather(1, keep)

    def full(self) -> torch.Tensor:
        """[B] bool: K hypotheses are finished."""
        return self.scores[:, -1] > NEG_INF

    def worst(self) -> torch.Tensor:
        """[B] the lowest kept score."""
        return self.scores[:, -1]

    def best(self) -> torch.Tensor:
        """[B, L] the best hypothesis per item, padded to the longest of them."""
        return self.tokens[:, 0, : int(self.lengths[:, 0].max())]


@torch.no_grad()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
    use_cache: bool = True,
) -> torch.Tensor:
    """Beam search with ``num_beams`` beams per batch item; returns like ``generate``.

    Scores are summed log-probabilities; a finished hypothesis is ranked by score / length **
    ``length_penalty`` (length = generated tokens including EOS; 0 ranks by raw score, > 0 favours
    longer outputs). As in HF transformers, each step takes the 2K best continuations; those that
    end in EOS and rank in the top K become finished hypotheses, the best K others stay live. An
    item is done once it has K finished hypotheses and its best live beam, normalised at the
    current length, does not beat the worst of them. At the budget's end live beams compete too.
    """
    _check_budget(max_new_tokens)
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    session = _Session(model, input_ids, attention_mask, use_cache)
    prefix = session.tokens  # [B, P]
    (B, P), K, M, device = prefix.shape, num_beams, max_new_tokens, prefix.device
    session.reorder(torch.arange(B, device=device).repeat_interleave(K))  # [B*K] rows, K per item
    # All beams start identical: only the first may expand, or step one would pick K copies.
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = NEG_INF
    finished = _Hypotheses(B, K, M, pad_id, device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    row_offset = torch.arange(B, device=device)[:, None] * K  # [B, 1]
    top_k_rank = torch.arange(2 * K, device=device) < K  # [2K]
    for step in range(M):
        length = step + 1
        logp = session.next_logits().log_softmax(dim=-1)  # [B*K, V]
        V = logp.size(-1)
        totals = (beam_scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        cand_scores, cand = totals.topk(2 * K, dim=1)  # [B, 2K]
        cand_beam, cand_token = cand // V, cand % V  # [B, 2K]
        history = session.tokens[:, P:].reshape(B, K, step)  # [B, K, step]
        cand_history = history.gather(1, cand_beam[:, :, None].expand(-1, -1, step))  # [B, 2K, step]
        is_eos = cand_token == eos_id
        finished.add(
            torch.cat([cand_history, cand_token[:, :, None]], dim=2),  # [B, 2K, step + 1]
            cand_scores / length**length_penalty,
            is_eos & top_k_rank & ~done[:, None] & cand_scores.isfinite(),
        )
        beam_scores, pick = cand_scores.masked_fill(is_eos, NEG_INF).topk(K, dim=1)  # [B, K]
        session.reorder((row_offset + cand_beam.gather(1, pick)).view(-1))
        session.append(cand_token.gather(1, pick).view(-1))
        done |= finished.full() & (beam_scores[:, 0] / length**length_penalty <= finished.worst())
        if done.all():
            break
    L = session.tokens.size(1) - P
    live = session.tokens[:, P:].reshape(B, K, L)  # [B, K, L]
    finished.add(live, beam_scores / L**length_penalty, ~done[:, None] & beam_scores.isfinite())
    return torch.cat([prefix, finished.best()], dim=1)


def _check_budget(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue ``input_ids`` [B, T] (``attention_mask`` [B, T], 1 = real; left padding for
    decoder-only batches) by up to ``max_new_tokens`` tokens.

    Returns [B, P + N] as HF transformers does: P is the prompt (decoder-only) or the decoder
    start token (encoder-decoder), N <= ``max_new_tokens`` the generated tokens, shorter when every
    sequence has ended. A sequence ends at its first ``eos_id`` (kept); ``pad_id`` fills the rest.

    Greedy by default; ``do_sample`` draws from the softmax after ``temperature``, ``top_k``
    (0 = off) and ``top_p`` (1.0 = off) filtering, with ``generator`` for reproducible draws;
    ``num_beams`` > 1 runs ``beam_search`` (deterministic, not combined with sampling).
    """
    _check_budget(max_new_tokens)
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; use do_sample=False for greedy")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if num_beams > 1:
        if do_sample:
            raise ConfigError("beam search is deterministic here: use num_beams=1 with do_sample")
        return beam_search(
            model,
            input_ids,
            attention_mask,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            pad_id=pad_id,
            length_penalty=length_penalty,
            use_cache=use_cache,
        )
    return _greedy_or_sample(
        _Session(model, input_ids, attention_mask, use_cache),
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
