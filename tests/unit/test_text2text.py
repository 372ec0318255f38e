"""T5-style text-to-text classification: label names as decoder targets, rank classification."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from plm_core.config import FinetuneConfig, ModelConfig, TokenizerConfig, model_preset
from plm_core.errors import ConfigError
from plm_core.finetune.classification import finetune_classification
from plm_core.finetune.text2text import build_text2text, label_scores, label_targets, text2text_model
from plm_core.models.encoder import BertForMaskedLM
from plm_core.models.io import save_model
from plm_core.serving.classifier import ClassifierPredictor, evaluate_classification
from plm_core.tokenizer import Tokenizer, train_tokenizer
from tests.unit.test_finetune_classification import TINY_MODEL, sentiment_sentences

SIZES = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=64)


def seq2seq_cfg(arch: str = "t5") -> ModelConfig:
    extra = {"arch": "bart"} if arch == "bart" else {}
    return model_preset("tiny", "seq2seq", **SIZES, **extra)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sentiment toy task (labels 0/1, which the loader names "negative"/"positive", as for
    SST-2) and a tokenizer that also saw the label words."""
    root = tmp_path_factory.mktemp("t2t")
    for split, n, seed in (("train", 400, 0), ("dev", 200, 1)):
        rows = [json.dumps({"sentence": s, "label": y}) for s, y in sentiment_sentences(n, seed)]
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    corpus = [s for s, _ in sentiment_sentences(3000, 2)] + ["positive negative"] * 50
    (root / "clean" / "train").mkdir(parents=True)
    pd.DataFrame(
        {"id": [str(i) for i in range(len(corpus))], "source": "synthetic", "text": corpus}
    ).to_parquet(root / "clean" / "train" / "part-00000.parquet")
    (root / "tokenizer").mkdir()
    train_tokenizer(
        root / "clean",
        TokenizerConfig(vocab_size=64, num_sentinels=4, byte_fallback=False),
        root / "tokenizer",
    )
    return {"train": root / "train.jsonl", "dev": root / "dev.jsonl", "tokenizer": root / "tokenizer"}


def t2t_config(task: dict[str, Path], **overrides: object) -> FinetuneConfig:
    values = dict(
        train_path=str(task["train"]),
        dev_path=str(task["dev"]),
        max_len=32,
        batch_size=16,
        epochs=6,
        lr=2e-3,
        threads=1,
        seq2seq_head="text",
    )
    return FinetuneConfig(**{**values, **overrides})


def manual_log_likelihood(model: torch.nn.Module, sequence: list[int], target: list[int]) -> float:
    """log p(target | sequence) for one example, unbatched and unpadded: the LM's own teacher-forced
    forward (labels -> shifted decoder inputs), log-softmax of its logits, summed over the target."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequence]), labels=torch.tensor([target]))["logits"][0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(log_probs[t, tok] for t, tok in enumerate(target)))


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_rank_classification_matches_a_manual_log_likelihood(
    task: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """Batched, padded, encode-once scoring equals a per-example full forward; the predicted label
    is the argmax; the saved directory's predictor returns the same softmax."""
    tokenizer = Tokenizer.load(task["tokenizer"])
    labels = ["negative", "positive", "so so"]  # targets of different lengths
    targets = label_targets(tokenizer, labels)
    assert all(t[-1] == tokenizer.eos_id for t in targets) and len({len(t) for t in targets}) > 1
    torch.manual_seed(0)
    cfg = seq2seq_cfg(arch)
    model = text2text_model(replace(cfg, vocab_size=tokenizer.vocab_size)).eval()
    texts = [
        "bad",
        "the film was good and the music was lovely",
        "a very boring story with a dreadful ending",
    ]
    sequences = [[tokenizer.cls_id, *ids, tokenizer.sep_id] for ids in tokenizer.encode(texts)]
    assert len({len(s) for s in sequences}) == 3  # batches of 2 then hold padding the masks must hide
    scores = label_scores(model, sequences, targets, tokenizer.pad_id, batch_size=2)
    manual = torch.tensor(
        [[manual_log_likelihood(model, s, t) for t in targets] for s in sequences], dtype=torch.float64
    )
    assert scores.shape == (3, 3)
    assert torch.allclose(scores.double(), manual, atol=1e-5), (scores, manual)
    assert (scores < 0).all()
    assert scores.argmax(dim=-1).tolist() == manual.argmax(dim=-1).tolist()

    # The same model as a served directory (the contract: model.safetensors, config.json, tokenizer/).
    out = tmp_path / "served"
    body_cfg = model.cfg
    extra = {"task": "classification", "classification_head": "text", "labels": labels, "max_len": 32}
    save_model(model, body_cfg, out, extra={**extra, "label_targets": targets, "num_labels": 3})
    shutil.copytree(task["tokenizer"], out / "tokenizer")
    proba = ClassifierPredictor(out).predict_proba(texts)
    np.testing.assert_allclose(proba, torch.softmax(scores, dim=-1).numpy(), atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def t5_text(task: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("t5text") / "model"
    losses: list[float] = []
    result = finetune_classification(
        task["tokenizer"],
        None,
        seq2seq_cfg("t5"),
        t2t_config(task),
        out,
        on_metrics=lambda m, s: losses.append(m["train_loss"]) if "train_loss" in m else None,
    )
    return {"dir": out, "result": result, "losses": losses}


def test_text_to_text_t5_learns_and_serves(task: dict[str, Path], t5_text: dict[str, object]) -> None:
    out, result, losses = t5_text["dir"], t5_text["result"], t5_text["losses"]
    assert isinstance(out, Path) and isinstance(result, dict) and isinstance(losses, list)
    assert result["classification_head"] == "text" and result["dev_accuracy"] >= 0.9
    assert len(losses) >= 2 and losses[-1] < 0.5 * losses[0]
    doc = json.loads((out / "config.json").read_text())
    assert doc["classification_head"] == "text" and doc["labels"] == ["negative", "positive"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer" / "spm.model").is_file()

    predictor = ClassifierPredictor(out)
    rows = [json.loads(line) for line in task["dev"].read_text().splitlines()]
    proba = predictor.predict_proba([r["sentence"] for r in rows])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    predicted = [predictor.labels[i] for i in proba.argmax(axis=1)]
    names = ["negative", "positive"]
    accuracy = np.mean([p == names[r["label"]] for p, r in zip(predicted, rows, strict=True)])
    assert accuracy == pytest.approx(result["dev_accuracy"])
    assert evaluate_classification(out, task["dev"])["accuracy"] == pytest.approx(result["dev_accuracy"])
    assert predictor.predict(["the plot was great"])[0]["label"] == "positive"
    # int8 dynamic quantized serving scores the same way (the tied LM head included).
    quantized = ClassifierPredictor(out, quantize=True).predict_proba([r["sentence"] for r in rows])
    assert (quantized.argmax(axis=1) == proba.argmax(axis=1)).mean() >= 0.95


def test_text_to_text_bart_learns(task: dict[str, Path], tmp_path: Path) -> None:
    result = finetune_classification(
        task["tokenizer"], None, seq2seq_cfg("bart"), t2t_config(task), tmp_path / "bart"
    )
    assert result["dev_accuracy"] >= 0.9
    assert json.loads((tmp_path / "bart" / "config.json").read_text())["model"]["arch"] == "bart"


def test_bad_heads_and_labels_are_config_errors(task: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an encoder-decoder"):
        finetune_classification(task["tokenizer"], None, TINY_MODEL, t2t_config(task), tmp_path / "a")
    with pytest.raises(ConfigError, match="seq2seq_head 'mean'"):
        finetune_classification(
            task["tokenizer"], None, seq2seq_cfg(), t2t_config(task, seq2seq_head="mean"), tmp_path / "b"
        )
    with pytest.raises(ConfigError, match="method='full'"):
        finetune_classification(
            task["tokenizer"], None, seq2seq_cfg(), t2t_config(task, method="lora"), tmp_path / "c"
        )
    tokenizer = Tokenizer.load(task["tokenizer"])
    with pytest.raises(ConfigError, match="same ids"):
        label_targets(tokenizer, ["good", "good"])
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_text_to_text_model_is_no_distillation_teacher(
    task: dict[str, Path], t5_text: dict[str, object], tmp_path: Path
) -> None:
    cfg = t2t_config(task, seq2seq_head="pooled", distill_teacher=str(t5_text["dir"]))
    with pytest.raises(ConfigError, match="text-to-text classifier"):
        finetune_classification(task["tokenizer"], None, TINY_MODEL, cfg, tmp_path / "student")


def test_scores_are_log_probabilities_of_the_target_tokens(task: dict[str, Path]) -> None:
    """Scored over every one-token target (each vocabulary id alone), the first decoder position's
    probabilities sum to 1: the scores are log-probabilities, not unnormalised logits."""
    tokenizer = Tokenizer.load(task["tokenizer"])
    torch.manual_seed(1)
    model = text2text_model(replace(seq2seq_cfg(), vocab_size=tokenizer.vocab_size)).eval()
    targets = [[i] for i in range(tokenizer.vocab_size)]
    scores = label_scores(model, [[tokenizer.cls_id, 10, 11, tokenizer.sep_id]], targets, tokenizer.pad_id)
    assert float(torch.logsumexp(scores[0], dim=0)) == pytest.approx(0.0, abs=1e-5)
    assert F.softmax(scores, dim=-1).shape == (1, tokenizer.vocab_size)


def test_pretrained_seq2seq_checkpoint_is_loaded_whole(task: dict[str, Path], tmp_path: Path) -> None:
    """Encoder, decoder and LM head all come from the checkpoint (the pooled head keeps only
    ``encoder.*``); a pretrained encoder-family directory is refused."""
    tokenizer = Tokenizer.load(task["tokenizer"])
    torch.manual_seed(3)
    pretrained = text2text_model(replace(seq2seq_cfg(), vocab_size=tokenizer.vocab_size))
    save_model(pretrained, pretrained.cfg, tmp_path / "lm")
    model, body_cfg = build_text2text(seq2seq_cfg("bart"), tokenizer.vocab_size, tmp_path / "lm")
    assert body_cfg.arch == "t5"  # the checkpoint's config wins over the given one
    expected = pretrained.state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in model.state_dict().items())
    assert any(name.startswith("decoder.layers.") for name in expected)

    encoder_cfg = replace(TINY_MODEL, vocab_size=tokenizer.vocab_size)
    save_model(BertForMaskedLM(encoder_cfg), encoder_cfg, tmp_path / "mlm")
    with pytest.raises(ConfigError, match="family 'encoder'"):
        finetune_classification(
            task["tokenizer"], tmp_path / "mlm", seq2seq_cfg(), t2t_config(task), tmp_path / "o"
        )
