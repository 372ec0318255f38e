"""Model bodies, task heads and their on-disk format."""

from plm_core.models.encoder import BertForMaskedLM, BertForSequenceClassification, BertModel

__all__ = ["BertForMaskedLM", "BertForSequenceClassification", "BertModel"]
