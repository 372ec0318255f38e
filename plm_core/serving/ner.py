"""Inference for a fine-tuned NER directory: raw texts in, entities with character offsets out.

A raw text is split into words at whitespace (the unit the model was trained on, CoNLL's one
token per line), each word's span in the text is kept, and an entity's offsets run from the
start of its first word to the end of its last, so ``text[start:end]`` is exactly the entity as
written, whitespace inside it included. Word tags become entities with seqeval's chunking (the
same conlleval rules the evaluation scores with), so what is served is what was measured.
CoNLL tokens split punctuation from words ("Germany ." not "Germany."); raw text that glues
them together is still labelled word by word, so "Germany." comes back as one entity with the
stop inside it. Splitting punctuation off is a tokenisation choice left to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqeval.metrics.sequence_labeling import get_entities

from plm_core.finetune.ner import EVAL_BATCH_SIZE, load_ner_model, predict_tags

_WORD = re.compile(r"\S+")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for every whitespace-separated word of ``text`` (end exclusive)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


class NerPredictor:
    """Loads a NER directory once (CPU); ``predict`` returns each text's entities."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        ner = load_ner_model(self.model_dir)
        self.model, self.tokenizer = ner.model, ner.tokenizer
        self.labels, self.max_len = ner.labels, ner.max_len

    def predict_words(
        self, sentences: Sequence[Sequence[str]], batch_size: int = EVAL_BATCH_SIZE
    ) -> list[list[str]]:
        """IOB2 tags for pre-split words (one list per sentence)."""
        tags, _, _ = predict_tags(
            self.model, self.tokenizer, sentences, self.labels, self.max_len, batch_size
        )
        return tags

    def predict(self, texts: Sequence[str], batch_size: int = EVAL_BATCH_SIZE) -> list[list[dict[str, Any]]]:
        """Per text, ``[{"entity", "start", "end", "text", "score"}]`` in text order; ``score`` is
        the mean probability the model gave the predicted tag of each of the entity's words."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts, not a single string")
        spans = [split_words(t) for t in texts]
        sentences = [[w for w, _, _ in s] for s in spans]
        nonempty = [i for i, s in enumerate(sentences) if s]
        results: list[list[dict[str, Any]]] = [[] for _ in texts]
        if not nonempty:
            return results
        tags, probs, _ = predict_tags(
            self.model,
            self.tokenizer,
            [sentences[i] for i in nonempty],
            self.labels,
            self.max_len,
            batch_size,
        )
        for i, sentence_tags, sentence_probs in zip(nonempty, tags, probs, strict=True):
            chosen = sentence_probs.max(axis=-1)
            for kind, first, last in get_entities(sentence_tags):
                start, end = spans[i][first][1], spans[i][last][2]
                results[i].append(
                    {
                        "entity": kind,
                        "start": start,
                        "end": end,
                        "text": texts[i][start:end],
                        "score": float(chosen[first : last + 1].mean()),
                    }
                )
        return results
