"""T5's span corruption (Raffel et al. 2020, section 3.1.4): random spans of noise tokens are each
replaced by one sentinel in the input; the target lists every span behind its sentinel.

The noise mask is exactly T5's ``random_spans_noise_mask`` (t5/data/preprocessors.py): the
numbers of noise tokens, noise spans and non-noise spans are fixed by the length,

    num_noise_tokens = round(length * noise_density)      (clipped to [1, length - 1])
    num_noise_spans  = round(num_noise_tokens / mean_noise_span_length)   (at least 1)

and, subject to that, every alternation of non-noise and noise spans that starts with non-noise
is equally likely (so, as in T5, the last token is always noise). Each span length split is T5's
``_random_segmentation``: shuffle ``num_spans - 1`` "starts a segment" markers over the
``num_items - 1`` gaps; the shuffle is drawn for a whole batch at once (argsort of uniform noise).

Because the counts depend only on the length, every row of a packed batch corrupts to the same
input and target lengths: the batch stays rectangular, with no padding and no wasted compute.
``raw_length_for_inputs`` gives the packed length whose corrupted input fills a model's input
length exactly (T5's ``random_spans_helper``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from plm_core.errors import ConfigError


def _span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) of a sequence of ``length`` tokens, as T5 computes them."""
    num_noise_tokens = min(max(round(length * noise_density), 1), length - 1)
    num_noise_spans = max(round(num_noise_tokens / mean_noise_span_length), 1)
    return num_noise_tokens, num_noise_spans


def span_corruption_lengths(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(input length, target length) after corrupting ``length`` tokens, each with its EOS."""
    num_noise_tokens, num_noise_spans = _span_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1


def raw_length_for_inputs(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> int:
    """The longest raw length whose corrupted input (EOS included) fits ``inputs_length``: pack
    windows of this many tokens so the encoder input is exactly full (T5: 568 raw -> 512)."""
    length = inputs_length - 1
    while span_corruption_lengths(length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        length += 1
    return length


def _random_segmentation(
    num_items: int, num_segments: int, batch: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Per row, a uniformly random split of ``num_items`` items into ``num_segments`` non-empty
    segments: their lengths [batch, num_segments], each row summing to ``num_items``."""
    order = torch.rand(batch, num_items - 1, generator=generator).argsort(dim=1)  # a shuffle per row
    first_in_segment = F.pad(order < num_segments - 1, (1, 0))  # [batch, num_items]
    segment_id = first_in_segment.long().cumsum(dim=1)  # [batch, num_items], 0 .. num_segments-1
    lengths = torch.zeros(batch, num_segments, dtype=torch.long)
    return lengths.scatter_add_(1, segment_id, torch.ones_like(segment_id))


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    batch: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """T5's noise mask for ``batch`` sequences of ``length`` tokens: bool [batch, length], True = noise."""
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise ConfigError(
            f"span corruption needs 0 < noise_density < 1 and mean_noise_span_length >= 1, "
            f"got {noise_density} and {mean_noise_span_length}"
        )
    orig_length, length = length, max(length, 2)  # T5 pads degenerate lengths up to 2
    num_noise_tokens, num_noise_spans = _span_counts(length, noise_density, mean_noise_span_length)
    num_nonnoise_tokens = length - num_noise_tokens
    if num_noise_spans > num_nonnoise_tokens:
        raise ConfigError(
            f"{num_noise_spans} noise spans need as many non-noise tokens to separate them, but "
            f"length {length} leaves {num_nonnoise_tokens}; lower noise_density"
        )
    noise_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, batch, generator)
    nonnoise_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, batch, generator)
    # Non-noise first, then alternate: [nonnoise_0, noise_0, nonnoise_1, noise_1, ...].
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=2).view(batch, 2 * num_noise_spans)
    span_starts = interleaved.cumsum(dim=1)[:, :-1]  # [batch, 2 * spans - 1]
    start_indicator = torch.zeros(batch, length, dtype=torch.long).scatter_(1, span_starts, 1)
    span_num = start_indicator.cumsum(dim=1)  # [batch, length]: index of the span each token is in
    return (span_num % 2 == 1)[:, :orig_length]


def _replace_spans(ids: torch.Tensor, spans: torch.Tensor, sentinels: torch.Tensor) -> torch.Tensor:
    """Replace each run of True in ``spans`` [B, L] by the next sentinel and drop the rest of the
    run (T5's ``noise_span_to_unique_sentinel``). Every row keeps the same count -> [B, L']."""
    previous = F.pad(spans[:, :-1], (1, 0))  # [B, L]
    first = spans & ~previous  # the first token of each run
    span_index = (first.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, L]
    replaced = torch.where(first, sentinels[span_index], ids)  # [B, L]
    return replaced[~spans | first].view(ids.size(0), -1)


def span_corruption(
    input_ids: torch.Tensor,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Packed token rows [B, L] -> {"input_ids" [B, Li], "labels" [B, Lt]} (both end in EOS).

    ``sentinel_ids`` are the tokenizer's ``<extra_id_N>`` in order; ``generator`` (on CPU) makes a
    resumed run draw the same spans. With the default T5 settings and L = 568: Li = 512, Lt = 114.
    """
    B, L = input_ids.shape
    noise = random_spans_noise_mask(L, noise_density, mean_noise_span_length, B, generator)  # [B, L]
    num_spans = _span_counts(max(L, 2), noise_density, mean_noise_span_length)[1]
    if num_spans > len(sentinel_ids):
        raise ConfigError(
            f"{num_spans} noise spans per row need as many sentinels; the tokenizer has {len(sentinel_ids)}"
        )
    sentinels = torch.as_tensor(list(sentinel_ids[:num_spans]), dtype=input_ids.dtype)
    eos = input_ids.new_full((B, 1), eos_id)
    ids = input_ids.cpu()
    inputs = _replace_spans(ids, noise, sentinels)  # [B, L - noise tokens + spans]
    # The targets are the complement: each non-noise span becomes the sentinel of the noise span
    # that follows it, so "<extra_id_i> span_i" pairs line up with the input's sentinels.
    targets = _replace_spans(ids, ~noise, sentinels)  # [B, noise tokens + spans]
    return {
        "input_ids": torch.cat([inputs.to(input_ids.device), eos], dim=1),
        "labels": torch.cat([targets.to(input_ids.device), eos], dim=1),
    }
