"""BERT masking statistics on ~1M tokens, and its invariants."""

from __future__ import annotations

import torch

from plm_core.objectives.mlm import mask_tokens

VOCAB = 8000
MASK_ID = 4
SPECIAL = list(range(7)) + list(range(7, 107))  # [PAD].. </s>, then 100 sentinels


def _corpus(n_rows: int = 8192, seq_len: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n_rows, seq_len), generator=g)  # [8192, 128] = 1,048,576 tokens
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP], as the loader builds them
    return ids


def test_masking_statistics_on_a_million_tokens():
    ids = _corpus()
    special = torch.isin(ids, torch.tensor(SPECIAL))
    g = torch.Generator().manual_seed(1)
    inputs, labels = mask_tokens(
        ids, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL, probability=0.15, generator=g
    )
    selected = labels != -100
    n = int(selected.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.003
    assert not (selected & special).any()  # specials are never selected
    assert torch.equal(labels[selected], ids[selected])  # labels are the original tokens
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions are untouched

    masked = selected & (inputs == MASK_ID)
    kept = selected & (inputs == ids)
    replaced = selected & ~masked & ~kept
    assert abs(int(masked.sum()) / n - 0.8) < 0.01
    # A random draw equal to the original counts as "kept": 1 / |vocab - specials| of the 10%.
    assert abs(int(kept.sum()) / n - 0.1) < 0.01
    assert abs(int(replaced.sum()) / n - 0.1) < 0.01
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL)).any()  # never a special token
    assert int(inputs[replaced].max()) < VOCAB


def test_same_generator_seed_gives_same_masks():
    ids = _corpus(n_rows=16)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return mask_tokens(ids, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL, generator=g)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
