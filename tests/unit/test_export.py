"""HF export of model directories: what maps is exported and loads in transformers with the same
outputs; what does not map is left out and said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plm_core.config import model_preset
from plm_core.errors import ConfigError
from plm_core.export import export_hf
from plm_core.models.factory import classification_model
from plm_core.models.io import save_model

SIZES = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=32)
SIZES.update(dropout=0.0, attention_dropout=0.0)


def test_gpt_classifier_exports_its_body_as_gpt2model(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = model_preset("tiny", "decoder", **SIZES)
    torch.manual_seed(0)
    model = classification_model(cfg, 3).eval()
    save_model(model, cfg, tmp_path / "m", extra={"task": "classification", "labels": ["a", "b", "c"]})
    summary = export_hf(tmp_path / "m", tmp_path / "hf")
    assert summary["architectures"] == ["GPT2Model"]
    assert "classifier.weight" in summary["note"]  # the head is named as left out
    hf = transformers.GPT2Model.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[5, 7, 9, 11]])
    with torch.no_grad():
        ours, _ = model.encoder(ids)
        theirs = hf(ids).last_hidden_state
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_encoder_mlm_exports_body_and_seq2seq_classifier_does_not_map(tmp_path: Path) -> None:
    from plm_core.config import PretrainConfig
    from plm_core.models.factory import pretraining_model

    cfg = model_preset("tiny", "encoder", **SIZES)
    save_model(pretraining_model(cfg, PretrainConfig()), cfg, tmp_path / "mlm", extra={"task": "mlm"})
    summary = export_hf(tmp_path / "mlm", tmp_path / "hf")
    assert summary["architectures"] == ["BertModel"] and "mlm_head" in summary["note"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32

    s2s = model_preset("tiny", "seq2seq", **SIZES)
    save_model(classification_model(s2s, 2), s2s, tmp_path / "t5", extra={"task": "classification"})
    with pytest.raises(ConfigError, match="no HF class here maps"):
        export_hf(tmp_path / "t5", tmp_path / "hf2")
