"""Generation for a GPT and for a small encoder-decoder that implements the seq2seq protocol:
cache equivalence, beam/top-k degenerate cases, reproducible sampling, EOS, batching, and beam
search against exhaustive search."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from plm_core.config import ModelConfig, model_preset
from plm_core.errors import ConfigError
from plm_core.generate import beam_search, filter_logits, generate
from plm_core.models.decoder import GPTForCausalLM
from plm_core.models.layers import Block, DecoderBlock, Embeddings

torch.set_num_threads(1)

V, PAD, NO_EOS = 40, 0, -1  # NO_EOS: an id the model can never produce


class TinySeq2Seq(nn.Module):
    """A BART-shaped encoder-decoder built from the shared blocks, implementing the protocol
    ``generate`` expects (``encode``, ``decode``, ``decoder_start_token_id``)."""

    decoder_start_token_id = 2

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.enc_embeddings, self.dec_embeddings = Embeddings(cfg), Embeddings(cfg)
        self.enc_layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.dec_layers = nn.ModuleList(
            DecoderBlock(cfg, cross_attention=True) for _ in range(cfg.num_layers)
        )
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        attend = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.enc_embeddings(input_ids)
        for block in self.enc_layers:
            x = block(x, attend)
        return x

    def decode(self, decoder_input_ids, enc_hidden, enc_mask, past_key_values=None, use_cache=False):
        past_len = 0 if past_key_values is None else past_key_values[0][0].size(2)
        T = decoder_input_ids.size(1)
        x = self.dec_embeddings(decoder_input_ids, positions=torch.arange(past_len, past_len + T))
        ctx_attend = None if enc_mask is None else enc_mask.bool()[:, None, None, :]
        presents = []
        for i, block in enumerate(self.dec_layers):
            past = None if past_key_values is None else past_key_values[i]
            x, present = block(
                x, context=enc_hidden, context_attend=ctx_attend, past=past, use_cache=use_cache
            )
            presents.append(present)
        return {"logits": self.lm_head(x), "past_key_values": presents if use_cache else None}


def _gpt(vocab: int = V, seed: int = 0, init: float = 0.02) -> GPTForCausalLM:
    torch.manual_seed(seed)
    cfg = model_preset(
        "tiny",
        "decoder",
        vocab_size=vocab,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position=64,
        dropout=0.0,
        attention_dropout=0.0,
        initializer_range=init,
    )
    return GPTForCausalLM(cfg).eval()


def _seq2seq(seed: int = 0) -> TinySeq2Seq:
    torch.manual_seed(seed)
    cfg = model_preset(
        "tiny",
        "seq2seq",
        arch="bart",
        vocab_size=V,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position=64,
        position="learned",
        norm="post",
        norm_type="layernorm",
        activation="gelu",
        bias=True,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return TinySeq2Seq(cfg).eval()


def _prompts(lengths: list[int], seed: int = 0, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random prompts ([B, T], mask [B, T]) and nothing else."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(T - n, T) if side == "left" else slice(0, n)
        ids[b, cols] = torch.randint(3, V, (n,), generator=g)
        mask[b, cols] = 1
    return ids, mask


MODELS = {"gpt": (_gpt, "left"), "seq2seq": (_seq2seq, "right")}


@pytest.fixture(params=list(MODELS))
def setup(request):
    build, side = MODELS[request.param]
    model = build()
    ids, mask = _prompts([5, 8, 3], side=side)
    prefix = ids.size(1) if request.param == "gpt" else 1
    return model, ids, mask, prefix


def test_greedy_with_cache_equals_greedy_without(setup):
    model, ids, mask, _ = setup
    args = dict(max_new_tokens=10, eos_id=NO_EOS, pad_id=PAD)
    assert torch.equal(
        generate(model, ids, mask, **args), generate(model, ids, mask, use_cache=False, **args)
    )
    beams = dict(args, num_beams=3)
    assert torch.equal(
        generate(model, ids, mask, **beams), generate(model, ids, mask, use_cache=False, **beams)
    )


def test_output_starts_with_the_prompt_or_the_decoder_start(setup):
    model, ids, mask, prefix = setup
    out = generate(model, ids, mask, max_new_tokens=4, eos_id=NO_EOS, pad_id=PAD)
    assert out.shape == (3, prefix + 4)
    if prefix == 1:
        assert (out[:, 0] == TinySeq2Seq.decoder_start_token_id).all()
    else:
        assert torch.equal(out[:, :prefix], ids)


def test_beam_of_one_and_top_k_of_one_equal_greedy(setup):
    model, ids, mask, prefix = setup
    free = generate(model, ids, mask, max_new_tokens=8, eos_id=NO_EOS, pad_id=PAD)
    eos = int(free[0, prefix + 2])  # a token greedy produces, so EOS handling is exercised
    args = dict(max_new_tokens=8, eos_id=eos, pad_id=PAD)
    greedy = generate(model, ids, mask, **args)
    assert torch.equal(beam_search(model, ids, mask, num_beams=1, **args), greedy)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, ids, mask, do_sample=True, top_k=1, generator=g, **args), greedy)


def test_eos_stops_each_sequence_and_pads_the_rest(setup):
    model, ids, mask, prefix = setup
    free = generate(model, ids, mask, max_new_tokens=8, eos_id=NO_EOS, pad_id=PAD)[:, prefix:]
    eos = int(free[0, 2])
    out = generate(model, ids, mask, max_new_tokens=8, eos_id=eos, pad_id=PAD)[:, prefix:]
    for row, free_row in zip(out.tolist(), free.tolist(), strict=True):
        stop = free_row.index(eos) + 1 if eos in free_row else len(free_row)
        assert row[:stop] == free_row[:stop]
        assert all(t == PAD for t in row[stop:])
    assert out.size(1) == max(
        (r.index(eos) + 1 if eos in r else 8) for r in free.tolist()
    )  # stops as soon as every sequence has ended


def test_batched_greedy_equals_one_by_one(setup):
    model, ids, mask, prefix = setup
    free = generate(model, ids, mask, max_new_tokens=6, eos_id=NO_EOS, pad_id=PAD)
    eos = int(free[1, prefix + 1])
    batched = generate(model, ids, mask, max_new_tokens=6, eos_id=eos, pad_id=PAD)[:, prefix:]
    for b in range(ids.size(0)):
        real = ids[b : b + 1, mask[b].bool()]
        alone = generate(model, real, max_new_tokens=6, eos_id=eos, pad_id=PAD)
        alone = alone[0, real.size(1) if prefix > 1 else 1 :]
        n = alone.numel()
        assert torch.equal(batched[b, :n], alone)
        assert (batched[b, n:] == PAD).all()


def test_batched_beam_search_equals_one_by_one(setup):
    model, ids, mask, prefix = setup
    batched = generate(model, ids, mask, max_new_tokens=5, eos_id=NO_EOS, pad_id=PAD, num_beams=3)[:, prefix:]
    for b in range(ids.size(0)):
        real = ids[b : b + 1, mask[b].bool()]
        alone = generate(model, real, max_new_tokens=5, eos_id=NO_EOS, pad_id=PAD, num_beams=3)
        assert torch.equal(batched[b], alone[0, -5:])


def test_seeded_sampling_is_reproducible(setup):
    model, ids, mask, _ = setup
    args = dict(max_new_tokens=12, eos_id=NO_EOS, pad_id=PAD, do_sample=True, temperature=1.5, top_p=0.95)

    def draw(seed: int) -> torch.Tensor:
        return generate(model, ids, mask, generator=torch.Generator().manual_seed(seed), **args)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_filtering_keeps_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda f: torch.isfinite(f).squeeze(0).tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.75)) == [True, True, False, False]  # 0.5 + 0.3 >= 0.75
    assert kept(filter_logits(logits, 1.0, 0, 0.85)) == [True, True, True, False]
    assert kept(filter_logits(logits, 1.0, 0, 0.1)) == [True, False, False, False]  # never empty
    shuffled = logits[:, [2, 0, 3, 1]]
    assert kept(filter_logits(shuffled, 1.0, 0, 0.75)) == [False, True, False, True]
    torch.testing.assert_close(filter_logits(logits, 2.0, 0, 1.0), logits / 2)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_finds_the_exhaustive_best(length_penalty):
    """With as many beams as length-2 prefixes, beam search is exhaustive over 3 new tokens."""
    vocab, eos, steps = 5, 4, 3
    model = _gpt(vocab=vocab, init=0.5)
    prompt = torch.tensor([[1, 3, 2]])
    # Every continuation of length 1..3 that has EOS only at its end, or no EOS at all at length 3.
    candidates = [
        seq
        for n in range(1, steps + 1)
        for seq in itertools.product(range(vocab), repeat=n)
        if eos not in seq[:-1] and (seq[-1] == eos or n == steps)
    ]

    def score(seq: tuple[int, ...]) -> float:
        full = torch.cat([prompt, torch.tensor([seq])], dim=1)
        with torch.no_grad():
            logp = model(full)["logits"].log_softmax(-1)[0]
        total = sum(logp[prompt.size(1) - 1 + i, t].item() for i, t in enumerate(seq))
        return total / len(seq) ** length_penalty

    scores = {seq: score(seq) for seq in candidates}
    best = max(scores, key=scores.get)
    out = beam_search(
        model,
        prompt,
        num_beams=vocab**2,
        max_new_tokens=steps,
        eos_id=eos,
        pad_id=PAD,
        length_penalty=length_penalty,
    )[0, prompt.size(1) :].tolist()
    found = tuple(out[: out.index(eos) + 1] if eos in out else out)
    assert scores[found] == pytest.approx(scores[best], abs=1e-5)


def test_bad_arguments_are_config_errors():
    model = _gpt()
    ids = torch.tensor([[5, 6, 7]])
    for bad in (
        dict(max_new_tokens=0),
        dict(temperature=0.0),
        dict(top_p=0.0),
        dict(top_k=-1),
        dict(num_beams=2, do_sample=True),
    ):
        with pytest.raises(ConfigError):
            generate(model, ids, **{"max_new_tokens": 3, "eos_id": 1, "pad_id": PAD, **bad})
