"""Encoder-decoder bodies (T5, BART) and their task wrappers: conditional generation and
sequence classification.

One pair of stacks serves both architectures; the structural switches come from ``ModelConfig``
(``position``, ``norm``, ``norm_type``, ``activation``, ``gated_ffn``, ``bias``) through the shared
blocks of ``plm_core.models.layers``. ``cfg.arch`` picks the recipe that the switches do not cover:

=================================  ===============================  ==============================
                                   t5                               bart
=================================  ===============================  ==============================
attention scale                    none (folded into the init)      1/sqrt(hd)
initialisation                     Mesh-TF / HF T5 per-matrix stds  N(0, initializer_range)
decoder start token                [PAD]                            </s>
tied logits                        hidden * H^-0.5 before lm_head   as is
[PAD] embedding row                trained (it starts decoding)     frozen padding row
=================================  ===============================  ==============================

The seq2seq presets are T5's (relative positions, pre-LN RMSNorm, ReLU, no biases); BART is
``model_preset(size, "seq2seq", **BART)``. T5's bucketed relative position bias is not in
``layers`` (no other family uses it): ``RelativePositionBias`` lives here, computed once per stack
and forward and shared by its layers, as in T5.

State-dict layout (a wrapper *is* the body plus its head, so the body's names stay at the top):

- ``encoder.*``: the encoder stack, including the token embedding shared by both stacks
  (``encoder.embeddings.word.weight``). The fine-tuning loader copies ``encoder.*`` into a
  classifier, and the embedding must travel with it.
- ``decoder.*``: the decoder stack; ``decoder.embeddings.word.weight`` is an alias of the shared
  embedding (``save_model`` stores it once, under the encoder's name).
- ``lm_head.weight``: an alias of the shared embedding when ``tie_word_embeddings``, else its own.

Key/value caches (``past_key_values``) are a list with one tuple per decoder layer,
``(k, v, cross_k, cross_v)``, each [B, nh, Tk|S, hd]: batch on dim 0, so beam search reorders
them with ``index_select(0, ...)``; the encoder output is projected for cross-attention once.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ARCH_DEFAULTS, ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.layers import (
    Attention,
    Block,
    DecoderBlock,
    Embeddings,
    FeedForward,
    KVCache,
    RotaryEmbedding,
    init_bert_weights,
    make_norm,
)
from plm_core.tokenizer import SPECIAL_TOKENS

EOS_ID = SPECIAL_TOKENS["eos"][1]  # BART's decoder start token (docs/contracts.md fixes the id)

# Overrides that turn the (T5-shaped) seq2seq presets into BART: learned positions, post-LN
# LayerNorm with HF BART's fixed eps, exact GELU, biases.
BART: dict[str, Any] = ARCH_DEFAULTS["bart"]


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias: one learned scalar per (distance bucket, head), added
    to the attention logits of every self-attention layer of a stack.

    Distances below ``num_buckets / 2`` (per direction) get a bucket each; longer ones share
    logarithmically wider buckets up to ``max_distance``, beyond which all share the last. The
    decoder's bias is unidirectional: future keys are masked anyway, so they share bucket 0.
    """

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.embed = nn.Embedding(self.num_buckets, cfg.num_heads)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        """Key position minus query position [...] -> bucket index [...] (Mesh TensorFlow's rule)."""
        num_buckets, buckets = self.num_buckets, torch.zeros_like(relative)
        if self.bidirectional:
            num_buckets //= 2
            buckets = (relative > 0).long() * num_buckets  # keys to the right use the upper half
            distance = relative.abs()
        else:
            distance = (-relative).clamp(min=0)
        max_exact = num_buckets // 2
        # clamp(min=1): log(0) would be -inf; those distances take the exact branch anyway.
        log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(
            self.max_distance / max_exact
        )
        large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
        return buckets + torch.where(distance < max_exact, distance, large)

    def forward(self, num_queries: int, num_keys: int) -> torch.Tensor:
        """Bias [1, nh, T, Tk] for the last ``num_queries`` of ``num_keys`` positions (a KV cache
        holds the earlier ones)."""
        device = self.embed.weight.device
        q_pos = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]  # [T, 1]
        k_pos = torch.arange(num_keys, device=device)[None, :]  # [1, Tk]
        values = self.embed(self.bucket(k_pos - q_pos))  # [T, Tk, nh]
        return values.permute(2, 0, 1)[None]  # [1, nh, T, Tk]


class _Stack(nn.Module):
    """What the encoder and decoder stacks share: embeddings (with learned or sinusoidal positions),
    the rotary or relative-bias position machinery, and the final norm of a pre-LN stack."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.rotary = RotaryEmbedding(cfg) if cfg.position == "rotary" else None
        relative = cfg.position == "relative"
        self.relative_bias = RelativePositionBias(cfg, bidirectional) if relative else None
        # A pre-LN residual stream is never normalised by the blocks themselves.
        self.final_norm = make_norm(cfg) if cfg.norm == "pre" else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def _embed(
        self, input_ids: torch.Tensor, past_len: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """-> (embedded [B, T, H], rotary (cos, sin) or None, relative bias [1, nh, T, Tk] or None)
        for the ``T`` new positions that follow ``past_len`` cached ones."""
        num_keys = past_len + input_ids.size(1)
        if self.embeddings.position is not None and num_keys > self.cfg.max_position:
            raise ConfigError(f"sequence length {num_keys} exceeds max_position {self.cfg.max_position}")
        positions = torch.arange(past_len, num_keys, device=input_ids.device)  # [T]
        x = self.embeddings(input_ids, positions=positions)  # [B, T, H]
        rotary = None if self.rotary is None else self.rotary(positions[None])  # 2 x [1, 1, T, hd]
        bias = None if self.relative_bias is None else self.relative_bias(input_ids.size(1), num_keys)
        return x, rotary, bias

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.final_norm(x))  # [B, T, H]


class Seq2SeqEncoder(_Stack):
    """Bidirectional stack: token ids [B, S] -> hidden [B, S, H]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, bidirectional=True)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask`` [B, S], 1 = real token, 0 = padding (None: no padding)."""
        # Packed pretraining batches have no padding; attend=None keeps SDPA on its fastest kernel.
        attend = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B,1,1,S]
        x, rotary, bias = self._embed(input_ids, past_len=0)
        for block in self.layers:
            x = block(x, attend, rotary=rotary, bias=bias)
        return self._finish(x)


class Seq2SeqDecoder(_Stack):
    """Causal stack that cross-attends to the encoder output; reads the shared token embedding."""

    def __init__(self, cfg: ModelConfig, word_embedding: nn.Embedding) -> None:
        super().__init__(cfg, bidirectional=False)
        self.embeddings.word = word_embedding
        num_layers = cfg.num_decoder_layers or cfg.num_layers
        self.layers = nn.ModuleList(DecoderBlock(cfg, cross_attention=True) for _ in range(num_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: list[KVCache] | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, list[KVCache] | None]:
        """``input_ids`` [B, T] (the new positions when a cache is given), ``context`` [B, S, H] the
        encoder output with its padding mask ``context_mask`` [B, S] -> (hidden [B, T, H], cache or
        None). ``attention_mask`` [B, Tpast + T] marks real decoder tokens (None: no padding)."""
        past_len = 0 if past_key_values is None else past_key_values[0][0].size(2)
        attend = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B,1,1,Tk]
        context_attend = None if context_mask is None else context_mask.bool()[:, None, None, :]  # [B,1,1,S]
        x, rotary, bias = self._embed(input_ids, past_len)
        presents: list[KVCache] | None = [] if use_cache else None
        for i, block in enumerate(self.layers):
            x, present = block(
                x,
                attend,
                rotary=rotary,
                bias=bias,
                context=context,
                context_attend=context_attend,
                past=None if past_key_values is None else past_key_values[i],
                use_cache=use_cache,
            )
            if presents is not None:
                presents.append(present)
        return self._finish(x), presents


def init_t5_weights(module: nn.Module, cfg: ModelConfig) -> None:
    """T5's initialisation (Mesh TensorFlow, as in HF ``T5PreTrainedModel``), for ``model.apply``.

    Each matrix gets std 1/sqrt(fan_in); the query also absorbs the 1/sqrt(hd) that T5's unscaled
    attention leaves out. Embeddings start at unit scale: pre-LN normalises them before use and
    tied logits are rescaled by H^-0.5. Norms keep their unit scale. ``apply`` visits children before parents, so the
    ``RelativePositionBias`` branch overrides the generic embedding one for its table.
    """
    H = cfg.hidden_size
    if isinstance(module, Attention):
        head_dim = H // cfg.num_heads
        stds = {module.query: (H * head_dim) ** -0.5, module.key: H**-0.5, module.value: H**-0.5}
        stds[module.out] = H**-0.5
    elif isinstance(module, FeedForward):
        stds = {module.up: H**-0.5, module.down: cfg.intermediate_size**-0.5}
        if module.gate is not None:
            stds[module.gate] = H**-0.5
    elif isinstance(module, RelativePositionBias):
        nn.init.normal_(module.embed.weight, mean=0.0, std=H**-0.5)
        return
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=1.0)
        return
    else:  # norms keep their construction-time unit scale
        return
    for linear, std in stds.items():
        nn.init.normal_(linear.weight, mean=0.0, std=std)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def _init_weights(module: nn.Module, cfg: ModelConfig) -> None:
    """The architecture's initialisation for every parameter under ``module``."""
    if cfg.arch == "t5":
        module.apply(partial(init_t5_weights, cfg=cfg))
    else:
        module.apply(partial(init_bert_weights, std=cfg.initializer_range))


def _check(cfg: ModelConfig) -> None:
    """Refuse settings these stacks would otherwise ignore silently."""
    if cfg.family != "seq2seq":
        raise ConfigError(f"seq2seq models need a seq2seq-family config, got family {cfg.family!r}")
    if cfg.vocab_size <= 0:
        raise ConfigError("ModelConfig.vocab_size is 0; fill it from the tokenizer before building")
    if cfg.share_layers or cfg.embedding_size not in (0, cfg.hidden_size):
        raise ConfigError("share_layers and embedding_size (ALBERT's savings) are encoder-family only")


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs from ``labels`` [B, T]: ``start_id`` then labels[:, :-1], with
    the -100 of unscored positions turned into ``pad_id`` (an id the embedding can look up)."""
    shifted = labels.new_full(labels.shape, start_id)  # [B, T]
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


class Seq2SeqModel(nn.Module):
    """The encoder-decoder body: ``encoder`` and ``decoder`` stacks sharing one token embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        self.encoder = Seq2SeqEncoder(cfg)
        self.decoder = Seq2SeqDecoder(cfg, self.encoder.embeddings.word)
        self.decoder_start_token_id = cfg.pad_token_id if cfg.arch == "t5" else EOS_ID
        if cfg.arch == "t5":
            # T5 starts decoding from [PAD]: that row is a real input whose embedding must train.
            self.encoder.embeddings.word.padding_idx = None
        _init_weights(self, cfg)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids`` [B, S], ``attention_mask`` [B, S] (1 = real, None = no padding) -> [B, S, H]."""
        return self.encoder(input_ids, attention_mask)

    def decode_states(
        self,
        decoder_input_ids: torch.Tensor,
        enc_hidden: torch.Tensor,
        enc_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        past_key_values: list[KVCache] | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, list[KVCache] | None]:
        """Decoder hidden states [B, T, H] for ``decoder_input_ids`` [B, T] given the encoder output
        ``enc_hidden`` [B, S, H] and its mask ``enc_mask`` [B, S], plus the cache (``use_cache``)."""
        return self.decoder(
            decoder_input_ids, enc_hidden, enc_mask, decoder_attention_mask, past_key_values, use_cache
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """{"last_hidden_state" [B, T, H] of the decoder, "encoder_hidden_state" [B, S, H]}."""
        if decoder_input_ids is None:
            raise ValueError("Seq2SeqModel needs decoder_input_ids")
        enc_hidden = self.encode(input_ids, attention_mask)  # [B, S, H]
        hidden, _ = self.decode_states(decoder_input_ids, enc_hidden, attention_mask, decoder_attention_mask)
        return {"last_hidden_state": hidden, "encoder_hidden_state": enc_hidden}


class Seq2SeqForConditionalGeneration(Seq2SeqModel):
    """Body + vocabulary projection: the pretraining model (span corruption, denoising) and the
    generation model (``encode`` / ``decode`` / ``decoder_start_token_id`` for ``generate``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.encoder.embeddings.word.weight
        else:
            std = 1.0 if cfg.arch == "t5" else cfg.initializer_range
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=std)
        # T5 keeps its embeddings at unit scale; reused as the output projection they would give
        # logits sqrt(H) times too large, so tied T5 rescales the decoder output (as HF does).
        tied_t5 = cfg.arch == "t5" and cfg.tie_word_embeddings
        self.logit_scale = cfg.hidden_size**-0.5 if tied_t5 else 1.0

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder hidden [B, T, H] -> vocabulary logits [B, T, V]."""
        return self.lm_head(hidden * self.logit_scale)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        enc_hidden: torch.Tensor,
        enc_mask: torch.Tensor | None,
        past_key_values: list[KVCache] | None = None,
        use_cache: bool = False,
    ) -> dict[str, Any]:
        """The generation step: {"logits" [B, T, V], "past_key_values" (None without ``use_cache``)}.

        With a cache, ``decoder_input_ids`` holds only the new positions; the cache holds the
        earlier ones and the projected encoder output, which is then not read again.
        """
        hidden, presents = self.decode_states(
            decoder_input_ids, enc_hidden, enc_mask, None, past_key_values, use_cache
        )
        return {"logits": self.logits(hidden), "past_key_values": presents}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """{"logits" [B, T, V]}, plus "loss" with ``labels`` [B, T] (-100 = no loss).

        Without ``decoder_input_ids`` the decoder reads ``labels`` shifted right behind
        ``decoder_start_token_id`` (teacher forcing). The loss is the mean over labelled positions
        in float32, and 0 (with zero gradients) when there are none: a sum over a clamped count,
        which needs no host sync and keeps DDP ranks in step.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels (to derive them from)")
            decoder_input_ids = shift_right(labels, self.decoder_start_token_id, self.cfg.pad_token_id)
        enc_hidden = self.encode(input_ids, attention_mask)  # [B, S, H]
        hidden, _ = self.decode_states(decoder_input_ids, enc_hidden, attention_mask, decoder_attention_mask)
        logits = self.logits(hidden)  # [B, T, V]
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            total = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            out["loss"] = total / (labels != IGNORE_INDEX).sum().clamp(min=1)
        return out


class Seq2SeqForSequenceClassification(nn.Module):
    """Encoder stack + masked mean pooling + dense/tanh + dropout + linear classifier.

    T5-style (the encoder alone, as Sentence-T5 and T5 encoder classifiers do) rather than BART's
    decoder-fed-the-input head: fine-tuning copies a pretrained body with ``load_encoder_into``,
    which moves ``encoder.*`` only, so a head that also needed the decoder would start it from
    random weights. Mean pooling, because no seq2seq input carries a [CLS] summary token.
    """

    def __init__(self, cfg: ModelConfig, num_labels: int) -> None:
        super().__init__()
        _check(cfg)
        if num_labels < 2:
            raise ConfigError(f"num_labels must be >= 2 for classification, got {num_labels}")
        self.num_labels = num_labels
        self.encoder = Seq2SeqEncoder(cfg)
        _init_weights(self.encoder, cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init = partial(init_bert_weights, std=cfg.initializer_range)
        self.pooler.apply(init)
        self.classifier.apply(init)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"logits" [B, num_labels]} plus {"loss"} (mean cross-entropy) when ``labels`` [B] is given.

        Same interface as ``BertForSequenceClassification``; ``token_type_ids`` is accepted and
        unused (seq2seq models have no segment embeddings).
        """
        hidden = self.encoder(input_ids, attention_mask)  # [B, S, H]
        if attention_mask is None:
            mean = hidden.mean(dim=1)  # [B, H]
        else:
            weights = attention_mask.to(hidden.dtype)[:, :, None]  # [B, S, 1]
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [B, H]
        logits = self.classifier(self.dropout(torch.tanh(self.pooler(mean))))  # [B, num_labels]
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out
