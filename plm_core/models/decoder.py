"""GPT-style decoder body and its task wrappers (causal LM, sequence classification).

GPT-2 is this body with the decoder presets (learned positions, pre-LN, LayerNorm, tanh GELU);
the same code runs rotary or sinusoidal positions, RMSNorm and gated feed-forwards when the
config asks (``plm_core.models.layers``).

Every wrapper holds the body as ``encoder`` -- although it is a decoder -- because pretrained bodies
move into task models with ``plm_core.models.io.load_encoder_into``, which copies the ``encoder.*``
tensors. One attribute name for the body of every family keeps one loader and one checkpoint
layout (docs/contracts.md, "pretrain").

Key/value caches (``past_key_values``) are a list with one ``(k, v)`` tuple per layer, each
[B, nh, Tk, hd]: batch on dim 0, so generation reorders beams with ``index_select(0, ...)``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.layers import (
    DecoderBlock,
    Embeddings,
    KVCache,
    RotaryEmbedding,
    init_bert_weights,
    make_norm,
)


class GPTModel(nn.Module):
    """The decoder body: embeddings, causal blocks and (pre-LN) a final norm -> hidden [B, T, H]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ConfigError("ModelConfig.vocab_size is 0; fill it from the tokenizer before building")
        if cfg.family != "decoder":
            raise ConfigError(f"GPTModel needs a decoder-family config, got family {cfg.family!r}")
        if cfg.position == "relative":
            raise ConfigError(
                "relative (T5 bucketed) positions belong to seq2seq; the decoder takes "
                "learned, sinusoidal or rotary"
            )
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.rotary = RotaryEmbedding(cfg) if cfg.position == "rotary" else None
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_layers))
        # A pre-LN residual stream is never normalised by the blocks themselves.
        self.final_norm = make_norm(cfg) if cfg.norm == "pre" else nn.Identity()
        self.apply(partial(init_bert_weights, std=cfg.initializer_range))
        # GPT-2: the two residual projections per block get std / sqrt(2 L), so the variance the
        # residual stream accumulates over depth does not grow with the number of layers.
        residual_std = cfg.initializer_range / math.sqrt(2 * cfg.num_layers)
        for block in self.layers:
            nn.init.normal_(block.attn.out.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.down.weight, mean=0.0, std=residual_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: list[KVCache] | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, list[KVCache] | None]:
        """``input_ids`` [B, T] (the new positions when a cache is given) -> (hidden [B, T, H],
        cache covering past + new positions, or None without ``use_cache``).

        ``attention_mask`` [B, Tpast + T], 1 = real token, 0 = padding, covers the cached positions
        too. Positions count real tokens only, so a left-padded prompt starts at position 0 like
        an unpadded one; without a mask positions run on from the cache length.
        """
        B, T = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].size(2)
        num_keys = past_len + T
        if self.embeddings.position is not None and num_keys > self.cfg.max_position:
            raise ConfigError(f"sequence length {num_keys} exceeds max_position {self.cfg.max_position}")
        if attention_mask is None:
            # Packed pretraining batches have no padding: attend=None lets SDPA use is_causal.
            attend = None
            positions = torch.arange(past_len, num_keys, device=input_ids.device)[None]  # [1, T]
        else:
            if tuple(attention_mask.shape) != (B, num_keys):
                raise ConfigError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({B}, {num_keys}) "
                    f"covering {past_len} cached and {T} new positions"
                )
            attend = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, Tk]
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]  # [B, T]
        x = self.embeddings(input_ids, positions=positions)  # [B, T, H]
        rotary = None if self.rotary is None else self.rotary(positions)  # 2 x [B|1, 1, T, hd]
        presents: list[KVCache] | None = [] if use_cache else None
        for i, block in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[i]
            x, present = block(x, attend, rotary=rotary, past=past, use_cache=use_cache)
            if presents is not None:
                presents.append(present)
        return self.final_norm(x), presents


class GPTForCausalLM(nn.Module):
    """Decoder body + vocabulary projection (tied to the token embeddings when configured)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = GPTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.encoder.embeddings.word.weight
        else:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=cfg.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: list[KVCache] | None = None,
        use_cache: bool = False,
    ) -> dict[str, torch.Tensor | list[KVCache]]:
        """{"logits" [B, T, V]}, plus "loss" with ``labels`` [B, T] and "past_key_values" with
        ``use_cache``.

        ``labels`` are aligned with ``input_ids`` (usually equal to them): the shift happens here,
        position t is scored on predicting labels[t + 1]; -100 labels carry no loss. The loss is
        the mean over labelled positions, and 0 (with zero gradients) when there are none -- a
        sum divided by a clamped count, which needs no host sync and keeps DDP ranks in step.
        """
        hidden, presents = self.encoder(input_ids, attention_mask, past_key_values, use_cache)
        logits = self.lm_head(hidden)  # [B, T, V]
        out: dict[str, torch.Tensor | list[KVCache]] = {"logits": logits}
        if labels is not None:
            targets = labels[:, 1:].reshape(-1)  # [B * (T-1)]
            total = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                targets,
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            out["loss"] = total / (targets != IGNORE_INDEX).sum().clamp(min=1)
        if presents is not None:
            out["past_key_values"] = presents
        return out


class GPTForSequenceClassification(nn.Module):
    """Decoder body + dropout + linear classifier on the hidden state of the last real token,
    the only position that has seen the whole (causally attended) sequence."""

    def __init__(self, cfg: ModelConfig, num_labels: int) -> None:
        super().__init__()
        if num_labels < 2:
            raise ConfigError(f"num_labels must be >= 2 for classification, got {num_labels}")
        self.num_labels = num_labels
        self.encoder = GPTModel(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.classifier.apply(partial(init_bert_weights, std=cfg.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"logits" [B, num_labels]} plus {"loss"} (mean cross-entropy) when ``labels`` [B] is given.

        Same interface as ``BertForSequenceClassification`` so fine-tuning calls every family alike;
        ``token_type_ids`` is accepted and unused (GPT has no segment embeddings: the separator
        token tells sentence pairs apart). Left and right padding both work.
        """
        hidden, _ = self.encoder(input_ids, attention_mask)  # [B, T, H]
        B, T = input_ids.shape
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=input_ids.device)  # [B]
        else:
            # The first real token seen from the right end (argmax returns the first maximum).
            last = T - 1 - attention_mask.long().flip(-1).argmax(-1)  # [B]
        pooled = hidden[torch.arange(B, device=hidden.device), last]  # [B, H]
        logits = self.classifier(self.dropout(pooled))  # [B, num_labels]
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out
