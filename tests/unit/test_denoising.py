"""BART denoising: masked fraction, Poisson spans with insertions, the reconstruction target,
sentence permutation on sentence ends, and padding of variable-length rows."""

from __future__ import annotations

import math
import re

import torch

from plm_core.objectives.denoising import denoising, sentence_end_ids
from plm_core.tokenizer import Tokenizer

torch.set_num_threads(1)

PAD, MASK, BOS, EOS = 0, 4, 5, 6
STOP = 10  # the sentence-end id of the synthetic rows


def _rows(B: int, L: int, seed: int = 0) -> torch.Tensor:
    """Ordinary tokens (>= 20) with a sentence end at about every tenth position."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(20, 500, (B, L), generator=g)
    return torch.where(torch.rand(B, L, generator=g) < 0.1, STOP, rows)


def _denoise(rows, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    kwargs = dict(mask_id=MASK, pad_id=PAD, bos_id=BOS, eos_id=EOS, sentence_end_ids={STOP})
    return denoising(rows, **{**kwargs, **overrides}, generator=torch.Generator().manual_seed(seed))


def _noised(out: dict[str, torch.Tensor], row: int) -> list[int]:
    """The corrupted tokens of one row, without <s>, </s> and padding."""
    return out["input_ids"][row][out["attention_mask"][row].bool()].tolist()[1:-1]


def _is_infilling(noised: list[int], original: list[int]) -> bool:
    """Whether ``noised`` is ``original`` with runs of >= 0 tokens each replaced by one [MASK]:
    glob matching with [MASK] as ``*`` (two pointers, back to the last star on a mismatch)."""
    i = j = 0
    star, resume = -1, 0
    while j < len(original):
        if i < len(noised) and noised[i] == MASK:
            star, resume, i = i, j, i + 1  # let the star match nothing for now
        elif i < len(noised) and noised[i] == original[j]:
            i, j = i + 1, j + 1
        elif star >= 0:
            resume += 1  # the last star swallows one more token
            i, j = star + 1, resume
        else:
            return False
    return all(t == MASK for t in noised[i:])


def _sentences(ids: list[int]) -> list[tuple[int, ...]]:
    out, current = [], []
    for t in ids:
        current.append(t)
        if t == STOP:
            out.append(tuple(current))
            current = []
    return out + ([tuple(current)] if current else [])


def _text_sentences(text: str) -> list[str]:
    return sorted(s.strip() for s in re.findall(r"[^.!?]+[.!?]", text))


def test_masked_fraction_spans_and_reconstruction_target():
    B, L, ratio, lam = 512, 128, 0.3, 3.0
    rows = _rows(B, L)
    out = _denoise(rows, mask_ratio=ratio, poisson_lambda=lam, permute_sentences=False)
    labels = out["labels"]
    assert torch.equal(labels[:, 1:-1], rows)  # the target is the original, framed by <s> ... </s>
    assert labels[:, 0].eq(BOS).all() and labels[:, -1].eq(EOS).all()
    masked = [L - sum(t != MASK for t in _noised(out, r)) for r in range(B)]
    assert all(m == math.ceil(ratio * L) for m in masked)  # the budget, exactly: spans never overlap
    assert abs(sum(masked) / (B * L) - ratio) < 1 / L
    num_masks = sum(_noised(out, r).count(MASK) for r in range(B))
    assert abs(sum(masked) / num_masks - lam) < 0.1 * lam  # tokens per [MASK]: Poisson mean, trimmed
    assert all(_is_infilling(_noised(out, r), rows[r].tolist()) for r in range(64))


def test_zero_length_spans_insert_a_mask():
    rows = _rows(64, 100, seed=1)
    out = _denoise(rows, mask_ratio=0.2, poisson_lambda=0.5, permute_sentences=False)
    # Poisson(0.5) draws mostly 0 and 1: more [MASK]s than masked tokens means insertions.
    inserts = [
        _noised(out, r).count(MASK) - (100 - sum(t != MASK for t in _noised(out, r))) for r in range(64)
    ]
    assert all(n > 0 for n in inserts)
    assert all(_is_infilling(_noised(out, r), rows[r].tolist()) for r in range(64))


def test_sentence_permutation_moves_whole_sentences():
    rows = _rows(200, 80, seed=2)
    rows[:, -1] = STOP  # a moved trailing fragment would merge with its new successor when re-split
    out = _denoise(rows, mask_ratio=0.0, permute_sentences=True)
    moved = 0
    for r in range(200):
        original, permuted = _sentences(rows[r].tolist()), _sentences(_noised(out, r))
        assert sorted(permuted) == sorted(original)
        moved += permuted != original
    assert moved > 150  # rows with several sentences almost always change order
    unchanged = _denoise(rows, mask_ratio=0.0, permute_sentences=False)
    assert torch.equal(unchanged["input_ids"], unchanged["labels"])


def test_a_trailing_fragment_moves_as_one_sentence():
    row = torch.tensor([21, 22, STOP, 23, 24])
    outcomes = {tuple(_noised(_denoise([row], seed=s, mask_ratio=0.0), 0)) for s in range(20)}
    assert outcomes == {(21, 22, STOP, 23, 24), (23, 24, 21, 22, STOP)}


def test_rows_of_different_lengths_are_padded():
    rows = [torch.arange(20, 25), torch.arange(20, 50), torch.arange(20, 32)]
    out = _denoise(rows)
    lengths = out["attention_mask"].sum(dim=1)
    assert out["input_ids"].shape[1] == int(lengths.max())
    assert all(out["input_ids"][r, int(n) :].eq(PAD).all() for r, n in enumerate(lengths))
    assert out["labels"].shape == (3, 32) and out["labels"][0, 7:].eq(-100).all()


def test_sentence_ends_of_a_trained_tokenizer(data_run):
    tok = Tokenizer.load(data_run.tokenizer_dir)
    ends = sentence_end_ids(tok)
    assert ends and not ends & tok.special_ids
    assert all(tok.id_to_piece(i)[-1] in ".!?" for i in ends)
    text = "The river was quiet. Was the garden bright? The captain came back!"
    ids = tok.encode([text])[0]
    assert sum(i in ends for i in ids) == 3
    out = denoising(
        [torch.tensor(ids)] * 20,
        mask_id=MASK,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
        sentence_end_ids=ends,
        mask_ratio=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    decoded = {tok.decode(_noised(out, r)) for r in range(20)}
    assert text in decoded and len(decoded) > 1
    assert all(_text_sentences(d) == _text_sentences(text) for d in decoded)
