"""Shared transformer blocks: attention against a plain softmax reference (padding, causal, bias,
cross, T5 scale), KV caches, positions, feed-forward variants, norms and their placement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plm_core.config import ModelConfig
from plm_core.errors import ConfigError
from plm_core.models.layers import (
    Attention,
    Block,
    DecoderBlock,
    Embeddings,
    FeedForward,
    RotaryEmbedding,
    apply_rotary,
    causal_mask,
    make_norm,
    sinusoidal_positions,
)

torch.set_num_threads(1)

H, NH = 32, 4
HD = H // NH


def _cfg(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=50,
        hidden_size=H,
        num_heads=NH,
        intermediate_size=64,
        max_position=40,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return ModelConfig(**{**base, **overrides})


def _x(B: int = 2, T: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, H, generator=torch.Generator().manual_seed(seed))


def _reference_attention(
    attn: Attention,
    x: torch.Tensor,
    *,
    context: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Textbook multi-head attention from the module's own projections."""
    src = x if context is None else context

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.size(0), t.size(1), NH, HD).transpose(1, 2)

    q, k, v = heads(attn.query(x)), heads(attn.key(src)), heads(attn.value(src))
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(HD))
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    return attn.out(y)


def _left_padding_mask(B: int, T: int, pads: list[int]) -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    return mask


@pytest.mark.parametrize("case", ["padding", "causal", "causal+padding", "causal+bias", "t5_scale", "cross"])
def test_attention_matches_softmax_reference(case):
    torch.manual_seed(0)
    arch = dict(family="seq2seq", arch="t5") if case == "t5_scale" else {}
    attn = Attention(_cfg(**arch)).eval()
    x = _x()
    B, T, _ = x.shape
    tril = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None]  # [1, 1, T, T]
    mask = _left_padding_mask(B, T, [0, 3])
    attend = mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    real = torch.ones(B, T, dtype=torch.bool)
    kwargs, ref_kwargs = {}, {}
    if case == "padding":
        kwargs, ref_kwargs = {"attend": attend}, {"allowed": attend}
    elif case == "causal":
        kwargs, ref_kwargs = {"causal": True}, {"allowed": tril}
    elif case == "causal+padding":
        kwargs, ref_kwargs = {"attend": attend, "causal": True}, {"allowed": tril & attend}
        real = mask.bool()  # padding queries have no key left in the reference (NaN rows)
    elif case == "causal+bias":
        bias = torch.randn(1, NH, T, T)
        kwargs, ref_kwargs = {"causal": True, "bias": bias}, {"allowed": tril, "bias": bias}
    elif case == "t5_scale":
        kwargs, ref_kwargs = {"attend": attend}, {"allowed": attend, "scale": 1.0}
    elif case == "cross":
        context = _x(B, 5, seed=1)
        ctx_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()[:, None, None, :]
        kwargs = {"attend": ctx_mask, "context": context}
        ref_kwargs = {"allowed": ctx_mask, "context": context}
    with torch.no_grad():
        got, cache = attn(x, **kwargs)
        expected = _reference_attention(attn, x, **ref_kwargs)
    assert cache is None
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_causal_mask_never_leaves_a_query_without_keys():
    """Left padding leaves padding queries no real key; each keeps itself, so no row is empty."""
    attend = _left_padding_mask(2, 7, [0, 3]).bool()[:, None, None, :]  # [2, 1, 1, 7]
    mask = causal_mask(attend, 7, 7, torch.device("cpu"))  # [2, 1, 7, 7]
    assert mask.any(-1).all()
    real = attend[:, 0, 0]  # [2, 7]
    expected = torch.tril(torch.ones(7, 7, dtype=torch.bool)) & real[:, None, :]
    assert torch.equal(mask[:, 0][real], expected[real])  # real queries: causal and padding only
    cached = causal_mask(None, 2, 7, torch.device("cpu"))  # the last 2 of 7 positions
    assert torch.equal(cached[0, 0], torch.tril(torch.ones(2, 7, dtype=torch.bool), diagonal=5))
    attn = Attention(_cfg()).eval()
    with torch.no_grad():
        y, _ = attn(_x(), attend, causal=True)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_incremental_decoding_with_cache_equals_full_pass(cross, position):
    torch.manual_seed(0)
    cfg = _cfg(norm="pre", position=position)
    block = DecoderBlock(cfg, cross_attention=cross).eval()
    rope = RotaryEmbedding(cfg)
    x = _x(T=6)
    B, T, _ = x.shape
    mask = _left_padding_mask(B, T, [0, 2])
    attend = mask.bool()[:, None, None, :]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
    context = _x(B, 4, seed=3) if cross else None
    ctx_attend = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()[:, None, None, :] if cross else None

    def rot(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return rope(pos) if position == "rotary" else None

    with torch.no_grad():
        full, _ = block(x, attend, rotary=rot(positions), context=context, context_attend=ctx_attend)
        # Prefill the first 3 positions, then one position at a time.
        step, past = block(
            x[:, :3],
            attend[..., :3],
            rotary=rot(positions[:, :3]),
            context=context,
            context_attend=ctx_attend,
            use_cache=True,
        )
        outs = [step]
        for t in range(3, T):
            step, past = block(
                x[:, t : t + 1],
                attend[..., : t + 1],
                rotary=rot(positions[:, t : t + 1]),
                context=context,
                context_attend=ctx_attend,
                past=past,
                use_cache=True,
            )
            outs.append(step)
    assert len(past) == (4 if cross else 2) and all(p.size(0) == B for p in past)
    assert past[0].shape == (B, NH, T, HD)
    if cross:
        assert past[2].shape == (B, NH, 4, HD)  # the context's keys, projected once
    real = mask.bool()
    torch.testing.assert_close(torch.cat(outs, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_cross_attention_block_needs_its_context():
    block = DecoderBlock(_cfg(), cross_attention=True)
    with pytest.raises(ConfigError, match="context"):
        block(_x())


def test_rotary_attention_depends_only_on_relative_positions():
    torch.manual_seed(0)
    cfg = _cfg(position="rotary")
    attn, rope = Attention(cfg).eval(), RotaryEmbedding(cfg)
    x = _x(B=1)
    positions = torch.arange(7)[None]
    with torch.no_grad():
        near, _ = attn(x, causal=True, rotary=rope(positions))
        far, _ = attn(x, causal=True, rotary=rope(positions + 11))
        plain, _ = attn(x, causal=True)
    torch.testing.assert_close(near, far, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(near, plain, atol=1e-3)
    # A rotation keeps norms: RoPE moves angles, never lengths.
    q = torch.randn(1, NH, 7, HD)
    torch.testing.assert_close(apply_rotary(q, *rope(positions)).norm(dim=-1), q.norm(dim=-1))


def test_sinusoidal_positions_follow_the_formula():
    dim, pos = 16, torch.tensor([0, 1, 5, 37])
    table = sinusoidal_positions(pos, dim)  # [4, 16]
    for row, p in enumerate(pos.tolist()):
        for i in range(dim // 2):
            angle = p / 10000 ** (2 * i / dim)
            assert table[row, i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[row, dim // 2 + i].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_embeddings_by_family_and_position():
    ids = torch.randint(1, 50, (2, 6))
    bert = Embeddings(_cfg())
    assert set(bert.state_dict()) == {
        "word.weight",
        "position.weight",
        "token_type.weight",
        "norm.weight",
        "norm.bias",
    }
    gpt = Embeddings(_cfg(family="decoder", arch="gpt2", norm="pre"))
    assert set(gpt.state_dict()) == {"word.weight", "position.weight"}  # no segments, no norm
    assert gpt.word.padding_idx is None
    sinus = Embeddings(_cfg(family="decoder", arch="gpt2", norm="pre", position="sinusoidal")).eval()
    expected = sinus.word(ids) + sinusoidal_positions(torch.arange(6), H)
    torch.testing.assert_close(sinus(ids), expected)
    rotary = Embeddings(_cfg(family="decoder", arch="gpt2", norm="pre", position="rotary")).eval()
    torch.testing.assert_close(rotary(ids), rotary.word(ids))  # rotary positions live in attention
    albert = Embeddings(_cfg(arch="albert", embedding_size=16))
    assert albert(ids).shape == (2, 6, 16)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
@pytest.mark.parametrize("gated", [False, True])
def test_feed_forward_variants(activation, gated):
    torch.manual_seed(0)
    ffn = FeedForward(_cfg(activation=activation, gated_ffn=gated)).eval()
    act = {
        "gelu": F.gelu,
        "gelu_tanh": lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))),
        "relu": F.relu,
        "silu": lambda t: t * torch.sigmoid(t),
    }[activation]
    x = _x()
    with torch.no_grad():
        h = act(ffn.gate(x)) * ffn.up(x) if gated else act(ffn.up(x))
        torch.testing.assert_close(ffn(x), ffn.down(h), atol=1e-5, rtol=1e-5)
    assert (ffn.gate is not None) == gated


def test_bias_switch_removes_every_linear_bias():
    block = DecoderBlock(_cfg(bias=False, gated_ffn=True), cross_attention=True)
    linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 11 and all(m.bias is None for m in linears)


def test_rmsnorm_scales_without_centering():
    norm = make_norm(_cfg(norm_type="rmsnorm", layer_norm_eps=1e-6))
    assert isinstance(norm, torch.nn.RMSNorm) and not hasattr(norm, "bias")
    x = _x() + 3.0
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert isinstance(make_norm(_cfg()), torch.nn.LayerNorm)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_norm_placement(placement):
    torch.manual_seed(0)
    block = Block(_cfg(norm=placement)).eval()
    x = _x()
    with torch.no_grad():
        got = block(x)
        if placement == "pre":
            h = x + block.attn(block.attn_norm(x))[0]
            expected = h + block.ffn(block.ffn_norm(h))
        else:
            h = block.attn_norm(x + block.attn(x)[0])
            expected = block.ffn_norm(h + block.ffn(h))
    torch.testing.assert_close(got, expected)


def test_bert_block_parameter_names_are_unchanged():
    """Checkpoints written before the other families existed must keep loading."""
    names = set(Block(_cfg()).state_dict())
    expected = {
        f"{m}.{p}"
        for m in (
            "attn.query",
            "attn.key",
            "attn.value",
            "attn.out",
            "attn_norm",
            "ffn.up",
            "ffn.down",
            "ffn_norm",
        )
        for p in ("weight", "bias")
    }
    assert names == expected


@pytest.mark.parametrize(
    "module, bad, match",
    [
        (Block, dict(activation="tanh"), "activation"),
        (Block, dict(norm_type="batchnorm"), "norm_type"),
        (Block, dict(norm="sandwich"), "norm placement"),
        (Embeddings, dict(position="alibi"), "position"),
    ],
)
def test_unknown_switch_values_are_config_errors(module, bad, match):
    with pytest.raises(ConfigError, match=match):
        module(_cfg(**bad))
