"""Whole-word and SpanBERT span masking: statistics over ~1M tokens and their invariants."""

from __future__ import annotations

import pytest
import torch

from plm_core.errors import ConfigError
from plm_core.objectives.mlm import (
    WORD_BOUNDARY,
    mask_spans,
    mask_whole_words,
    span_length_distribution,
    word_start_mask,
)
from plm_core.tokenizer import Tokenizer

torch.set_num_threads(1)

VOCAB = 8000
MASK_ID = 4
CLS, SEP = 2, 3
SPECIAL = list(range(107))  # [PAD] ... </s>, then 100 sentinels


def _word_start() -> torch.Tensor:
    """A synthetic vocabulary in which ~60% of the pieces begin a word (~1.7 pieces per word)."""
    g = torch.Generator().manual_seed(42)
    starts = torch.rand(VOCAB, generator=g) < 0.6
    starts[: len(SPECIAL)] = True
    return starts


def _corpus(n_rows: int, seq_len: int, inner_sep: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL), VOCAB, (n_rows, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP  # [CLS] ... [SEP], as the loader builds them
    if inner_sep:  # a document boundary inside every other window
        ids[::2, seq_len // 3] = SEP
    return ids


def _continues_word(ids: torch.Tensor, word_start: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the piece continues the word of the piece before it (same rule as the docs:
    no "▁" and the previous piece is not special)."""
    special = torch.isin(ids, torch.tensor(SPECIAL))
    cont = ~word_start[ids] & ~special
    cont[:, 0] = False
    cont[:, 1:] &= ~special[:, :-1]
    return cont


def _check_corruption(ids, inputs, labels, selected) -> None:
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert not (selected & special).any()  # specials are never selected
    assert torch.equal(labels[selected], ids[selected])  # labels are the original tokens
    assert (labels[~selected] == -100).all()
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions are untouched
    replaced = selected & (inputs != MASK_ID) & (inputs != ids)
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL)).any()  # never a special token


def test_word_start_mask_follows_the_sentencepiece_marker(data_run) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    starts = word_start_mask(tok)
    assert starts.dtype == torch.bool and starts.shape == (tok.vocab_size,)
    for i in range(tok.vocab_size):
        expected = tok.id_to_piece(i).startswith(WORD_BOUNDARY) or i in tok.special_ids
        assert bool(starts[i]) == expected, tok.id_to_piece(i)
    assert torch.equal(word_start_mask(tok.sp), starts)
    text = "the quiet harbour and the ancient village"
    (ids,) = tok.encode([text])
    assert int(starts[torch.tensor(ids)].sum()) == len(text.split())  # one start per word


def test_whole_word_masking_statistics_on_a_million_tokens() -> None:
    ids = _corpus(8192, 128, inner_sep=True)  # 1,048,576 tokens
    word_start = _word_start()
    special = torch.isin(ids, torch.tensor(SPECIAL))
    g = torch.Generator().manual_seed(1)
    inputs, labels = mask_whole_words(
        ids, word_start=word_start, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL, generator=g
    )
    selected = labels != -100
    _check_corruption(ids, inputs, labels, selected)
    n = int(selected.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.003

    # Never a partial word: a continuation piece is selected exactly when the piece before it is.
    cont = _continues_word(ids, word_start)
    assert cont.float().mean() > 0.3  # the corpus really has multi-piece words
    assert torch.equal(selected[:, 1:][cont[:, 1:]], selected[:, :-1][cont[:, 1:]])

    masked = selected & (inputs == MASK_ID)
    kept = selected & (inputs == ids)
    assert abs(int(masked.sum()) / n - 0.8) < 0.01
    assert abs(int(kept.sum()) / n - 0.1) < 0.01
    assert abs(int((selected & ~masked & ~kept).sum()) / n - 0.1) < 0.01


def _runs(selected_row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) half-open index ranges of the maximal runs of True in a 1-D bool tensor."""
    padded = torch.cat([torch.tensor([False]), selected_row, torch.tensor([False])]).int()
    edges = torch.diff(padded)
    starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def test_span_masking_rate_whole_words_and_per_span_corruption() -> None:
    ids = _corpus(8192, 128, inner_sep=False)
    word_start = _word_start()
    special = torch.isin(ids, torch.tensor(SPECIAL))
    g = torch.Generator().manual_seed(2)
    inputs, labels = mask_spans(
        ids, word_start=word_start, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL, generator=g
    )
    selected = labels != -100
    _check_corruption(ids, inputs, labels, selected)
    assert abs(int(selected.sum()) / int((~special).sum()) - 0.15) < 0.003
    # No position bias: the first word of a row is masked as often as any other.
    assert abs(selected[:, 1].float().mean().item() - 0.15) < 0.015

    # Runs are whole words: they start at a word start and stop before a continuation piece.
    cont = _continues_word(ids, word_start)
    run_start = selected & ~torch.cat([torch.zeros(8192, 1, dtype=torch.bool), selected[:, :-1]], dim=1)
    run_end = selected & ~torch.cat([selected[:, 1:], torch.zeros(8192, 1, dtype=torch.bool)], dim=1)
    assert not (run_start & cont).any()
    assert not (run_end[:, :-1] & cont[:, 1:]).any()

    # 80/10/10 per span: a run is all [MASK] or has no [MASK] at all.
    is_mask = (inputs == MASK_ID) & selected
    spans = all_mask = 0
    for row in range(0, 8192, 4):  # a quarter of the rows is plenty of spans (~6k)
        for a, b in _runs(selected[row]):
            k = int(is_mask[row, a:b].sum())
            assert k in (0, b - a)
            spans += 1
            all_mask += k == b - a
    assert abs(all_mask / spans - 0.8) < 0.02


def test_span_lengths_follow_the_clipped_geometric_distribution() -> None:
    """Histogram of span lengths in words vs the configured distribution, on long rows (spans cut
    by a row's ends are left out; with ~25 spans per row that biases the histogram by < 0.005)."""
    p, max_len = 0.2, 10
    ids = _corpus(1024, 1024, inner_sep=False)  # 1,048,576 tokens
    word_start = _word_start()
    g = torch.Generator().manual_seed(3)
    _, labels = mask_spans(
        ids,
        word_start=word_start,
        mask_id=MASK_ID,
        vocab_size=VOCAB,
        special_ids=SPECIAL,
        geometric_p=p,
        max_span_length=max_len,
        generator=g,
    )
    selected = labels != -100
    starts_word = word_start[ids]
    counts = torch.zeros(max_len + 1)
    for row in range(ids.size(0)):
        for a, b in _runs(selected[row]):
            if a == 1 or b == ids.size(1) - 1:  # touches [CLS] or [SEP]: possibly cut
                continue
            words = int(starts_word[row, a:b].sum())
            assert 1 <= words <= max_len
            counts[words] += 1
    empirical = counts[1:] / counts.sum()
    expected = span_length_distribution(p, max_len).float()
    total_variation = 0.5 * (empirical - expected).abs().sum().item()
    assert counts.sum() > 20_000
    assert total_variation < 0.02
    # The truncated-and-renormalised geometric has SpanBERT's mean of 3.8 words.
    assert abs(float((expected * torch.arange(1, max_len + 1)).sum()) - 3.8) < 0.01


def test_same_generator_seed_gives_same_masks() -> None:
    ids = _corpus(16, 64, inner_sep=True)
    kwargs = dict(word_start=_word_start(), mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL)
    for fn in (mask_whole_words, mask_spans):
        a = fn(ids, generator=torch.Generator().manual_seed(5), **kwargs)
        b = fn(ids, generator=torch.Generator().manual_seed(5), **kwargs)
        c = fn(ids, generator=torch.Generator().manual_seed(6), **kwargs)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[1], c[1])


def test_span_masking_refuses_an_unreachable_rate() -> None:
    with pytest.raises(ConfigError, match="out of reach"):
        mask_spans(
            _corpus(2, 16, inner_sep=False),
            word_start=_word_start(),
            mask_id=MASK_ID,
            vocab_size=VOCAB,
            special_ids=SPECIAL,
            probability=0.9,
        )
