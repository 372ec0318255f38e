"""Task heads that sit on an encoder body (x-transformers habit: bodies and heads are separate)."""

from __future__ import annotations

import torch
from torch import nn

from plm_core.config import ModelConfig
from plm_core.models.layers import _ACTIVATIONS, make_norm


def embedding_width(cfg: ModelConfig) -> int:
    """Width E of the word embeddings: ALBERT factorises them to ``embedding_size``; BERT uses H."""
    return (cfg.embedding_size or cfg.hidden_size) if cfg.arch == "albert" else cfg.hidden_size


class MLMHead(nn.Module):
    """The masked-LM head of BERT and ALBERT: dense + activation + LayerNorm, then a vocabulary
    decoder.

    The dense layer maps H -> E (E = H for BERT, ``embedding_size`` for ALBERT) so that the decoder
    weight [V, E] can be the word-embedding matrix, which the owning model ties; only the decoder
    bias is the head's own. The head is applied to the gathered masked positions only ([M, H], not
    [B, T, H]), so the vocabulary projection -- the largest matmul of a small model -- costs ~15%
    of a dense one.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E = embedding_width(cfg)
        self.act = _ACTIVATIONS[cfg.activation]  # HF uses hidden_act here too
        self.transform = nn.Linear(cfg.hidden_size, E)
        self.norm = make_norm(cfg, E)
        self.decoder = nn.Linear(E, cfg.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [..., H] -> logits [..., V]."""
        return self.decoder(self.norm(self.act(self.transform(hidden))))


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the first ([CLS]) position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [B, T, H] -> pooled [B, H]."""
        return torch.tanh(self.dense(hidden[:, 0]))


class SentenceRelationHead(nn.Module):
    """Two-way classifier on the pooled [CLS]: BERT's next-sentence (NSP) and ALBERT's
    sentence-order (SOP) head, which differ only in what the two classes mean.

    Class 0 is the natural pair (B follows A), class 1 the corrupted one (B is random for NSP,
    swapped with A for SOP), the label convention of HF ``BertForPreTraining`` and
    ``AlbertForPreTraining``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` [B, H] -> logits [B, 2]."""
        return self.classifier(pooled)
