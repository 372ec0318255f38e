"""Which model class serves which family: one place, so the training loop, fine-tuning and serving
build models by ``ModelConfig.family`` without knowing the classes.

Every wrapper keeps its body under ``encoder`` (the seq2seq classifier keeps the encoder stack
there), which is what lets ``io.load_encoder_into`` move a pretrained body into any task model.
"""

from __future__ import annotations

from torch import nn

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.errors import ConfigError


def pretraining_model(model_cfg: ModelConfig, cfg: PretrainConfig) -> nn.Module:
    """The model that ``model(**collate(batch))`` trains for ``cfg.objective``."""
    if model_cfg.family == "encoder":
        from plm_core.models.encoder import BertForMaskedLM, BertForPreTraining

        return BertForPreTraining(model_cfg) if cfg.sentence_objective else BertForMaskedLM(model_cfg)
    if model_cfg.family == "decoder":
        from plm_core.models.decoder import GPTForCausalLM

        return GPTForCausalLM(model_cfg)
    if model_cfg.family == "seq2seq":
        from plm_core.models.seq2seq import Seq2SeqForConditionalGeneration

        return Seq2SeqForConditionalGeneration(model_cfg)
    raise ConfigError(f"unknown model family {model_cfg.family!r}")


def classification_model(model_cfg: ModelConfig, num_labels: int) -> nn.Module:
    """Sequence classifier of the family: [CLS] pooler (encoder), last real token (decoder),
    mean-pooled encoder stack (seq2seq). All share ``forward(input_ids, attention_mask,
    token_type_ids, labels) -> {"logits", "loss"?}``."""
    if model_cfg.family == "encoder":
        from plm_core.models.encoder import BertForSequenceClassification

        return BertForSequenceClassification(model_cfg, num_labels)
    if model_cfg.family == "decoder":
        from plm_core.models.decoder import GPTForSequenceClassification

        return GPTForSequenceClassification(model_cfg, num_labels)
    if model_cfg.family == "seq2seq":
        from plm_core.models.seq2seq import Seq2SeqForSequenceClassification

        return Seq2SeqForSequenceClassification(model_cfg, num_labels)
    raise ConfigError(f"unknown model family {model_cfg.family!r}")
