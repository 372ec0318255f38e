"""Transformer building blocks shared by the three families: embeddings, positions, attention,
feed-forward, norms, and encoder / decoder blocks.

Every switch comes from ``ModelConfig`` (``position``, ``norm``, ``norm_type``, ``activation``,
``gated_ffn``, ``bias``), so BERT, GPT-2, BART and T5 style stacks are the same classes with other
settings. Parameter names follow the original BERT layout (separate ``query``/``key``/``value``
projections, ``attn_norm``/``ffn_norm``) for every family: HF checkpoints of each family then load
by renaming (and, for GPT-2's fused Conv1D, splitting and transposing), and BERT checkpoints saved
before the other families existed still load.

Shapes: B batch, T query length, S source length (cross-attention), Tk key length (past + new),
H hidden size, nh heads, hd head size (H / nh), I intermediate size, V vocabulary.

Key/value caches are tuples of tensors with the batch on dim 0 (``[B, nh, Tk, hd]``): generation
reorders them with ``index_select(0, ...)`` for beam search, so nothing here may break that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError

KVCache = tuple[
    torch.Tensor, ...
]  # one layer: (k, v) [B, nh, Tk, hd], plus (cross_k, cross_v) [B, nh, S, hd]

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU: BERT, BART
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,  # T5
    "silu": F.silu,  # SwiGLU with gated_ffn
}
_POSITIONS = ("learned", "sinusoidal", "rotary", "relative")


def make_norm(cfg: ModelConfig, dim: int = 0) -> nn.Module:
    """LayerNorm, or RMSNorm (T5: scale only, no mean subtraction, no bias) by ``cfg.norm_type``,
    over ``dim`` features (0 = hidden_size)."""
    dim = dim or cfg.hidden_size
    if cfg.norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
    if cfg.norm_type == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.layer_norm_eps)
    raise ConfigError(f"unknown norm_type {cfg.norm_type!r}; choose layernorm or rmsnorm")


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position vectors (Vaswani et al. 2017) in the ``[sin | cos]`` layout that
    fairseq and HF Marian use: ``positions`` [...] -> [..., dim], float32.

    Computed from the positions instead of read from a table, so there is no buffer to save and
    no length limit.
    """
    half = dim // 2
    inv_freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    )  # [dim/2]
    angles = positions[..., None].float() * inv_freq  # [..., dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [..., dim]


class Embeddings(nn.Module):
    """Token embeddings plus, by configuration, absolute positions, segments and a LayerNorm.

    - positions: ``learned`` adds a trained table (BERT, GPT-2, BART), ``sinusoidal`` adds fixed
      vectors; ``rotary`` and ``relative`` add nothing here (attention applies them).
    - segments (``token_type``): encoder family only, as ``ModelConfig.type_vocab_size`` says.
    - norm: only under post-LN blocks (BERT, BART). A post-LN block normalises its output but not
      its input, so the embeddings must arrive normalised; a pre-LN block normalises its own input.
    - ``padding_idx`` for the encoder and seq2seq families, whose pad id is a pad; GPT-2 has no pad
      token (batches pad with a real token), so freezing that row's gradient would freeze a word.
    - width: ALBERT factorises the embeddings to ``embedding_size`` (its body projects to H).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = (cfg.embedding_size or cfg.hidden_size) if cfg.arch == "albert" else cfg.hidden_size
        if cfg.position not in _POSITIONS:
            raise ConfigError(f"unknown position {cfg.position!r}; choose one of {_POSITIONS}")
        self.kind = cfg.position
        pad = None if cfg.family == "decoder" else cfg.pad_token_id
        self.word = nn.Embedding(cfg.vocab_size, dim, padding_idx=pad)
        self.position = nn.Embedding(cfg.max_position, dim) if cfg.position == "learned" else None
        use_segments = cfg.family == "encoder" and cfg.type_vocab_size > 0
        self.token_type = nn.Embedding(cfg.type_vocab_size, dim) if use_segments else None
        self.norm = make_norm(cfg, dim) if cfg.norm == "post" else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``input_ids`` [B, T]; ``positions`` [B, T] (None: 0..T-1 for every row) -> [B, T, dim]."""
        if positions is None:
            positions = torch.arange(input_ids.size(1), device=input_ids.device)  # [T]
        x = self.word(input_ids)  # [B, T, dim]
        if self.position is not None:
            x = x + self.position(positions)
        elif self.kind == "sinusoidal":
            x = x + sinusoidal_positions(positions, x.size(-1)).to(x.dtype)
        if self.token_type is not None:
            # Without token_type_ids every token is in segment 0: add that row, no [B, T] lookup.
            segment = self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids)
            x = x + segment
        return self.dropout(self.norm(x))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) in the GPT-NeoX / LLaMA "rotate half"
    layout: turns positions into the ``(cos, sin)`` pair that ``Attention`` applies to q and k.

    Computed once per forward by the model body and shared by all layers. Positions are per row
    ([B, T]) so left-padded batches rotate each sequence from its own first real token.
    """

    def __init__(self, cfg: ModelConfig, base: float = 10000.0) -> None:
        super().__init__()
        hd = cfg.hidden_size // cfg.num_heads
        inv_freq = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)  # [hd/2]
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` [B, T] -> (cos, sin), each [B, 1, T, hd] (broadcast over heads), float32."""
        angles = positions[..., None].float() * self.inv_freq  # [B, T, hd/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, hd]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, nh, T, hd] by the angles of ``cos``/``sin`` [B, 1, T, hd]."""
    x1, x2 = x.chunk(2, dim=-1)  # [B, nh, T, hd/2] each
    rotated = torch.cat([-x2, x1], dim=-1)  # [B, nh, T, hd]
    return (x * cos + rotated * sin).to(x.dtype)


def causal_mask(
    attend: torch.Tensor | None, num_queries: int, num_keys: int, device: torch.device
) -> torch.Tensor:
    """Boolean "may attend" mask for causal attention whose queries are the last ``num_queries``
    of ``num_keys`` positions (a KV cache holds the earlier ones).

    ``attend`` [B, 1, 1, Tk] marks real keys (None: all real) -> [B|1, 1, T, Tk].
    Each query may always attend to itself, so no row is empty: a left-padding query has no
    earlier real key, and what SDPA makes of an empty row depends on kernel and release (zeros in
    torch 2.13, NaN from the math path of earlier ones); a NaN at a padding position would reach
    the real ones through 0 * NaN in the next layer even where the mask hides it.
    """
    q_pos = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]  # [T, 1]
    k_pos = torch.arange(num_keys, device=device)[None, :]  # [1, Tk]
    mask = k_pos <= q_pos  # [T, Tk]
    if attend is not None:
        mask = (mask & attend) | (k_pos == q_pos)  # [B, 1, T, Tk]
    return mask[None, None] if mask.dim() == 2 else mask


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention``: self or cross, bidirectional
    or causal, with optional rotary positions, an additive bias and a key/value cache.

    SDPA picks the flash / memory-efficient kernels on GPU and a fused kernel on CPU. Causal
    attention without padding, cache or bias uses ``is_causal`` (no mask tensor, fastest kernels);
    otherwise the mask is an explicit boolean tensor.

    T5 folds the 1/sqrt(hd) of dot-product attention into its initialisation, so its attention is
    unscaled; every other architecture uses SDPA's default scale.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(H, H, bias=cfg.bias)
        self.key = nn.Linear(H, H, bias=cfg.bias)
        self.value = nn.Linear(H, H, bias=cfg.bias)
        self.out = nn.Linear(H, H, bias=cfg.bias)
        self.scale = 1.0 if cfg.arch == "t5" else None
        self.attention_dropout = cfg.attention_dropout
        self.dropout = nn.Dropout(cfg.dropout)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, H = t.shape
        return t.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)  # [B, nh, T, hd]

    def forward(
        self,
        x: torch.Tensor,
        attend: torch.Tensor | None = None,
        *,
        causal: bool = False,
        context: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Attend from ``x`` [B, T, H] -> (output [B, T, H], cache or None).

        - ``attend``: boolean "may attend" mask, True = real key; [B, 1, 1, Tk] key padding (or any
          shape SDPA broadcasts to [B, nh, T, Tk]); None = every key.
        - ``causal``: query i sees keys up to its own position (past keys included).
        - ``context`` [B, S, H]: cross-attention, keys and values come from it.
        - ``rotary``: (cos, sin) [B, 1, T, hd] of the query positions; self-attention only.
        - ``bias``: additive float [1|B, nh, T, Tk] (T5's relative position bias).
        - ``past``: self-attention: (k, v) [B, nh, Tpast, hd] of earlier positions, extended here;
          cross-attention: (k, v) [B, nh, S, hd] of the context, reused without projecting it again.
        - ``use_cache``: return (k, v) covering every key this call attended to.
        """
        B, T, H = x.shape
        q = self._split_heads(self.query(x))  # [B, nh, T, hd]
        if context is None:  # self-attention
            k = self._split_heads(self.key(x))  # [B, nh, T, hd]
            v = self._split_heads(self.value(x))  # [B, nh, T, hd]
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if past is not None:
                k = torch.cat([past[0], k], dim=2)  # [B, nh, Tk, hd]
                v = torch.cat([past[1], v], dim=2)  # [B, nh, Tk, hd]
        elif past is None:  # cross-attention, first call: project the context
            k = self._split_heads(self.key(context))  # [B, nh, S, hd]
            v = self._split_heads(self.value(context))  # [B, nh, S, hd]
        else:  # cross-attention, later calls: the context's keys and values are cached
            k, v = past
        present = (k, v) if use_cache else None

        num_keys = k.size(2)
        mask, is_causal = attend, False
        if causal and T > 1:  # a single query is the last position: it may see every key
            if attend is None and past is None and bias is None:
                is_causal = True
            else:
                mask = causal_mask(attend, T, num_keys, q.device)  # [B|1, 1, T, Tk]
        if bias is not None:
            bias = bias.to(q.dtype)  # SDPA wants a float mask in the query's dtype (bf16 autocast)
            mask = bias if mask is None else torch.where(mask, bias, float("-inf"))  # [B|1, nh, T, Tk]
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
        )  # [B, nh, T, hd]
        y = y.transpose(1, 2).reshape(B, T, H)  # [B, T, H]
        return self.dropout(self.out(y)), present


class FeedForward(nn.Module):
    """Position-wise MLP ``down(act(up(x)))``, or with ``gated_ffn`` the GLU variant
    ``down(act(gate(x)) * up(x))`` (GEGLU with gelu, SwiGLU with silu; Shazeer 2020).

    Dropout on its output, as in BERT and GPT-2.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.activation not in _ACTIVATIONS:
            raise ConfigError(f"unknown activation {cfg.activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[cfg.activation]
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.bias)
        self.gate = (
            nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.bias) if cfg.gated_ffn else None
        )
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, H] -> [B, T, H]."""
        up = self.up(x)  # [B, T, I]
        h = self.act(up) if self.gate is None else self.act(self.gate(x)) * up  # [B, T, I]
        return self.dropout(self.down(h))


class Block(nn.Module):
    """Encoder block: bidirectional self-attention, then feed-forward, each a residual sublayer.

    ``cfg.norm`` places the norms: post-LN ``norm(x + f(x))`` (BERT, BART) or pre-LN
    ``x + f(norm(x))`` (GPT-2, T5; the stack then needs a final norm).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.norm not in ("pre", "post"):
            raise ConfigError(f"unknown norm placement {cfg.norm!r}; choose pre or post")
        self.pre_norm = cfg.norm == "pre"
        self.attn = Attention(cfg)
        self.attn_norm = make_norm(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = make_norm(cfg)

    def _enter(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """What a sublayer reads: its normalised input under pre-LN, the residual stream under post-LN."""
        return norm(x) if self.pre_norm else x

    def _leave(self, x: torch.Tensor, y: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """Add the sublayer output ``y`` to the residual stream ``x`` (then normalise under post-LN)."""
        return x + y if self.pre_norm else norm(x + y)

    def forward(
        self,
        x: torch.Tensor,
        attend: torch.Tensor | None = None,
        *,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` [B, T, H]; ``attend`` [B, 1, 1, T] bool (True = real token) or None -> [B, T, H]."""
        y, _ = self.attn(self._enter(x, self.attn_norm), attend, rotary=rotary, bias=bias)
        x = self._leave(x, y, self.attn_norm)
        return self._leave(x, self.ffn(self._enter(x, self.ffn_norm)), self.ffn_norm)


class DecoderBlock(Block):
    """Decoder block: causal self-attention, optional cross-attention to an encoder's output
    (BART, T5), then feed-forward; pre- or post-LN like ``Block``.

    The layer cache is ``(k, v)`` of the self-attention, plus ``(cross_k, cross_v)`` of the
    context when there is cross-attention: the context is projected once per generation.
    """

    def __init__(self, cfg: ModelConfig, cross_attention: bool = False) -> None:
        super().__init__(cfg)
        self.cross_attn = Attention(cfg) if cross_attention else None
        self.cross_attn_norm = make_norm(cfg) if cross_attention else None

    def forward(
        self,
        x: torch.Tensor,
        attend: torch.Tensor | None = None,
        *,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_attend: torch.Tensor | None = None,
        past: KVCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """``x`` [B, T, H] (the last T positions) -> (hidden [B, T, H], layer cache or None).

        ``attend`` [B, 1, 1, Tk] marks real keys over past + new positions (None: no padding);
        ``context`` [B, S, H] and ``context_attend`` [B, 1, 1, S] are the encoder output and its
        padding; ``bias`` is the self-attention's additive bias; ``past`` is this layer's cache.
        """
        self_past = None if past is None else past[:2]
        y, self_kv = self.attn(
            self._enter(x, self.attn_norm),
            attend,
            causal=True,
            rotary=rotary,
            bias=bias,
            past=self_past,
            use_cache=use_cache,
        )
        x = self._leave(x, y, self.attn_norm)
        cross_kv = None
        if self.cross_attn is not None:
            if context is None:  # Attention would take a cached cross past for self-attention
                raise ConfigError("this decoder block cross-attends: pass the encoder output as context")
            cross_past = None if past is None else past[2:]
            y, cross_kv = self.cross_attn(
                self._enter(x, self.cross_attn_norm),
                context_attend,
                context=context,
                past=cross_past,
                use_cache=use_cache,
            )
            x = self._leave(x, y, self.cross_attn_norm)
        x = self._leave(x, self.ffn(self._enter(x, self.ffn_norm)), self.ffn_norm)
        present = None if not use_cache else self_kv if cross_kv is None else self_kv + cross_kv
        return x, present


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) for linear and embedding weights, zero biases, unit norms.

    Applied with ``model.apply`` so every model built from these blocks starts the way HF does
    (GPT-2 then rescales its residual projections, see ``plm_core.models.decoder``).
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
