"""One pretraining loop for every family: the objective follows the config, the loss falls, the
validation loss is finite, and a checkpoint restores into the right model class."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from plm_core.config import PackConfig, PretrainConfig, model_preset
from plm_core.data.pack import pack
from plm_core.errors import ConfigError
from plm_core.models.decoder import GPTForCausalLM
from plm_core.models.encoder import BertForMaskedLM, BertForPreTraining
from plm_core.models.seq2seq import Seq2SeqForConditionalGeneration
from plm_core.train.loop import Pretrainer

CASES = [
    ("encoder", "bert", dict(objective="mlm"), BertForMaskedLM),
    ("encoder", "bert", dict(objective="wwm"), BertForMaskedLM),
    ("encoder", "albert", dict(objective="span"), BertForMaskedLM),
    ("encoder", "bert", dict(objective="mlm", sentence_objective="sop"), BertForPreTraining),
    ("decoder", "gpt2", dict(objective="clm"), GPTForCausalLM),
    ("seq2seq", "t5", dict(objective="span_corruption"), Seq2SeqForConditionalGeneration),
    ("seq2seq", "bart", dict(objective="denoising"), Seq2SeqForConditionalGeneration),
]


@pytest.fixture(scope="module")
def packed(data_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack")
    pack(data_run.clean_dir, data_run.tokenizer_dir, PackConfig(num_workers=1), out)
    return out


def _config(data_run, packed: Path, family: str, arch: str, objective: dict) -> dict:
    tokenizer = json.loads((data_run.tokenizer_dir / "tokenizer.json").read_text())
    extra = {"embedding_size": 16} if arch == "albert" else {}
    if arch == "bart":
        extra.update(position="learned", norm="post", norm_type="layernorm", activation="gelu", bias=True)
    model = model_preset(
        "tiny",
        family,
        arch=arch,
        vocab_size=tokenizer["vocab_size"],
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        num_layers=1,
        max_position=64,
        dropout=0.0,
        attention_dropout=0.0,
        **extra,
    )
    cfg = PretrainConfig(
        seq_len=32, batch_size=8, max_steps=25, lr=1e-2, warmup_steps=2, eval_batches=2, **objective
    )
    return {
        "pack_dir": str(packed),
        "tokenizer": tokenizer,
        "tokenizer_dir": str(data_run.tokenizer_dir),
        "model": asdict(model),
        "pretrain": asdict(cfg),
    }


@pytest.mark.parametrize(("family", "arch", "objective", "model_cls"), CASES, ids=lambda c: str(c))
def test_each_objective_trains_its_family(data_run, packed, tmp_path, family, arch, objective, model_cls):
    torch.set_num_threads(1)
    config = _config(data_run, packed, family, arch, objective)
    trainer = Pretrainer(config)
    assert type(trainer.raw_model) is model_cls
    losses = [trainer.train_step()["loss"] for _ in range(25)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    assert math.isfinite(trainer.evaluate()["val_loss"])
    trainer.save(tmp_path / "ckpt")
    restored = Pretrainer(config)
    restored.restore(tmp_path / "ckpt")
    assert restored.state.step == 25
    for (name, a), b in zip(
        trainer.raw_model.state_dict().items(), restored.raw_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_objective_of_another_family_is_refused(data_run, packed):
    config = _config(data_run, packed, "decoder", "gpt2", dict(objective="mlm"))
    with pytest.raises(ConfigError, match="does not train a decoder"):
        Pretrainer(config)
