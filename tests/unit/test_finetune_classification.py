"""Fine-tuning on a tiny separable task, the saved directory, and the predictor that serves it."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from plm_core.config import FinetuneConfig, ModelConfig, TokenizerConfig, model_preset
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.classification import (
    bucketed_batches,
    build_classifier,
    finetune_classification,
    subsample,
)
from plm_core.finetune.task_data import ClassificationData
from plm_core.models.encoder import BertForMaskedLM
from plm_core.models.io import load_state_dict, save_model
from plm_core.serving.classifier import ClassifierPredictor, as_texts, evaluate_classification
from plm_core.tokenizer import train_tokenizer

POSITIVE = ["good", "great", "excellent", "wonderful", "lovely"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful"]
NEUTRAL = ["the", "a", "film", "movie", "story", "actor", "plot", "scene", "was", "is", "it", "this", "that"]
NEUTRAL += ["and", "of", "with", "music", "ending", "cast", "director", "script", "some", "very", "quite"]

TINY_MODEL = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=64)


def sentiment_sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences of neutral filler with one sentiment word; the word alone decides the label."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.choices(NEUTRAL, k=rng.randint(3, 12))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        out.append((" ".join(words), label))
    return out


def build_sentiment_task(root: Path) -> dict[str, Path]:
    """train/dev jsonl files and a trained tokenizer directory for the sentiment task."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 600, 0), ("dev", 200, 1)):
        lines = [json.dumps({"sentence": s, "label": y}) for s, y in sentiment_sentences(n, seed)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    clean = root / "clean"
    (clean / "train").mkdir(parents=True)
    corpus = [s for s, _ in sentiment_sentences(3000, 2)]
    pd.DataFrame(
        {"id": [str(i) for i in range(len(corpus))], "source": "synthetic", "text": corpus}
    ).to_parquet(clean / "train" / "part-00000.parquet")
    (root / "tokenizer").mkdir()
    train_tokenizer(
        clean, TokenizerConfig(vocab_size=64, num_sentinels=4, byte_fallback=False), root / "tokenizer"
    )
    return {"train": root / "train.jsonl", "dev": root / "dev.jsonl", "tokenizer": root / "tokenizer"}


def tiny_finetune_config(task: dict[str, Path], **overrides: object) -> FinetuneConfig:
    values = dict(
        train_path=str(task["train"]),
        dev_path=str(task["dev"]),
        max_len=32,
        batch_size=16,
        epochs=2,
        lr=2e-3,
        threads=1,
    )
    return FinetuneConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_sentiment_task(tmp_path_factory.mktemp("sentiment"))


@pytest.fixture(scope="module")
def finetuned(task: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("finetuned") / "model"
    calls: list[tuple[dict[str, float], int]] = []
    result = finetune_classification(
        task["tokenizer"],
        None,
        TINY_MODEL,
        tiny_finetune_config(task),
        out,
        on_metrics=lambda m, s: calls.append((m, s)),
    )
    return {"dir": out, "result": result, "calls": calls}


def test_bucketed_batches_cover_every_example_once_and_bucket_lengths() -> None:
    lengths = np.random.default_rng(0).integers(3, 60, size=1000).tolist()
    epoch1 = bucketed_batches(lengths, 8, np.random.default_rng(1))
    assert sorted(i for b in epoch1 for i in b) == list(range(1000))
    assert all(len(b) == 8 for b in epoch1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in epoch1)
    assert padded < 1.1 * sum(lengths)  # random batches of 8 would pad to ~1.5x
    assert epoch1 == bucketed_batches(lengths, 8, np.random.default_rng(1))
    assert epoch1 != bucketed_batches(lengths, 8, np.random.default_rng(2))


def test_subsample_is_deterministic_and_keeps_order() -> None:
    data = ClassificationData([str(i) for i in range(100)], [i % 2 for i in range(100)], ["a", "b"])
    a, b = subsample(data, 10, seed=3), subsample(data, 10, seed=3)
    assert a.texts == b.texts and len(a) == 10
    assert [int(t) for t in a.texts] == sorted(int(t) for t in a.texts)
    assert a.label_ids == [int(t) % 2 for t in a.texts]
    assert subsample(data, 0, seed=3) is data


def test_finetune_learns_separable_task(finetuned: dict[str, object]) -> None:
    result = finetuned["result"]
    assert result["dev_accuracy"] > 0.95  # chance is ~0.5
    assert result["dev_f1"] > 0.95
    assert result["train_examples"] == 600 and result["epochs"] == 2
    assert result["seconds"] < 60

    out: Path = finetuned["dir"]
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "classification"
    assert config["labels"] == ["negative", "positive"] and config["num_labels"] == 2
    assert config["max_len"] == 32 and config["pretrained_from"] is None
    assert config["model"]["hidden_size"] == 64 and config["model"]["vocab_size"] == 64
    assert config["finetune"]["epochs"] == 2
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["spm.model", "tokenizer.json"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 8  # 4 dev evaluations per epoch
    assert (
        metrics["best"]["dev_accuracy"]
        == result["dev_accuracy"]
        == max(h["dev_accuracy"] for h in metrics["history"])
    )

    dev_calls = [step for m, step in finetuned["calls"] if "dev_accuracy" in m]
    assert dev_calls == [h["step"] for h in metrics["history"]]
    assert any("train_loss" in m for m, _ in finetuned["calls"])


def test_saved_model_is_the_best_checkpoint(finetuned: dict[str, object], task: dict[str, Path]) -> None:
    report = evaluate_classification(finetuned["dir"], task["dev"])
    assert report["accuracy"] == pytest.approx(finetuned["result"]["dev_accuracy"])
    assert report["n"] == 200 and report["labels"] == ["negative", "positive"]
    assert np.asarray(report["confusion"]).sum() == 200


def test_predictor_probabilities_and_order(finetuned: dict[str, object]) -> None:
    predictor = ClassifierPredictor(finetuned["dir"])
    texts = ["the film was very wonderful", "awful", "this story is quite boring and the cast is some plot"]
    batch = predictor.predict(texts, batch_size=2)
    assert [r["label"] for r in batch] == ["positive", "negative", "negative"]
    for r in batch:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["probability"] == max(r["probabilities"].values())
        assert r["label_id"] == ["negative", "positive"].index(r["label"])
    # Batched with padding, in length-sorted order, must equal one text at a time.
    singles = [predictor.predict([t])[0]["probability"] for t in texts]
    assert [r["probability"] for r in batch] == pytest.approx(singles, abs=1e-5)


def test_as_texts_accepts_mlflow_inputs() -> None:
    assert as_texts(pd.DataFrame({"text": ["a", "b"]})) == ["a", "b"]
    assert as_texts(pd.Series(["a"])) == ["a"]
    assert as_texts(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="'text' column"):
        as_texts(pd.DataFrame({"sentence": ["a"]}))
    with pytest.raises(ValueError, match="string"):
        as_texts([1, 2])


def _pretrained_dir(root: Path, cfg: ModelConfig) -> Path:
    torch.manual_seed(123)
    model = BertForMaskedLM(cfg)
    save_model(model, cfg, root, extra={"task": "mlm"})
    return root


def test_pretrained_encoder_is_loaded_and_sizes_come_from_it(tmp_path: Path) -> None:
    pretrained_cfg = ModelConfig(
        vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64
    )
    pretrained = _pretrained_dir(tmp_path / "pretrained", pretrained_cfg)
    saved = {
        k.removeprefix("encoder."): v
        for k, v in load_state_dict(pretrained).items()
        if k.startswith("encoder.")
    }

    torch.manual_seed(0)
    model, body_cfg = build_classifier(TINY_MODEL, 2, 64, pretrained)
    assert asdict(body_cfg) == asdict(pretrained_cfg)  # TINY_MODEL's sizes are ignored
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, saved[name]), name

    torch.manual_seed(0)
    random_model, _ = build_classifier(pretrained_cfg, 2, 64, None)
    # Biases and LayerNorm start as zeros/ones either way; every weight matrix must differ.
    matrices = {n: t for n, t in random_model.encoder.state_dict().items() if t.ndim == 2}
    assert len(matrices) >= 7
    assert not any(torch.equal(t, saved[n]) for n, t in matrices.items())


def test_finetune_from_pretrained_records_source(task: dict[str, Path], tmp_path: Path) -> None:
    pretrained_cfg = ModelConfig(
        vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64
    )
    pretrained = _pretrained_dir(tmp_path / "pretrained", pretrained_cfg)
    out = tmp_path / "model"
    cfg = tiny_finetune_config(task, epochs=1, max_train_examples=64)
    result = finetune_classification(task["tokenizer"], pretrained, TINY_MODEL, cfg, out)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_from"] == str(pretrained)
    assert config["model"]["hidden_size"] == 32
    assert result["train_examples"] == 64


def test_config_errors(task: dict[str, Path], tmp_path: Path) -> None:
    small_vocab = ModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with pytest.raises(ConfigError, match="vocab_size 50"):
        finetune_classification(
            task["tokenizer"], None, small_vocab, tiny_finetune_config(task), tmp_path / "a"
        )
    with pytest.raises(ConfigError, match="max_position"):
        finetune_classification(
            task["tokenizer"], None, TINY_MODEL, tiny_finetune_config(task, max_len=128), tmp_path / "b"
        )
    one_label = tmp_path / "one.jsonl"
    one_label.write_text('{"sentence": "x", "label": "only"}\n')
    with pytest.raises(InputError, match="only one label"):
        finetune_classification(
            task["tokenizer"],
            None,
            TINY_MODEL,
            tiny_finetune_config(task, train_path=str(one_label)),
            tmp_path / "c",
        )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("family", ["decoder", "seq2seq"])
def test_decoder_and_seq2seq_families_learn(task: dict[str, Path], tmp_path: Path, family: str) -> None:
    """GPT classifies from the last real token, T5 from the mean-pooled encoder stack."""
    model_cfg = model_preset(
        "tiny", family, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=64
    )
    losses: list[float] = []
    cfg = tiny_finetune_config(task, epochs=3, max_train_examples=400)
    result = finetune_classification(
        task["tokenizer"],
        None,
        model_cfg,
        cfg,
        tmp_path / family,
        on_metrics=lambda m, s: losses.append(m["train_loss"]) if "train_loss" in m else None,
    )
    assert json.loads((tmp_path / family / "config.json").read_text())["model"]["family"] == family
    assert len(losses) >= 1 and result["train_loss"] < 0.69 * 0.5  # ln 2 is chance
    assert result["dev_accuracy"] > 0.9
    report = evaluate_classification(tmp_path / family, task["dev"])
    assert report["accuracy"] == pytest.approx(result["dev_accuracy"])


def test_early_stopping_in_classification(task: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_finetune_config(task, epochs=20, patience=2, evals_per_epoch=2, lr_schedule="cosine")
    result = finetune_classification(task["tokenizer"], None, TINY_MODEL, cfg, tmp_path / "m")
    assert result["stopped_early"] and result["steps"] < 20 * 38
    history = json.loads((tmp_path / "m" / "metrics.json").read_text())["history"]
    best = max(h["dev_accuracy"] for h in history)
    # Stopped exactly `patience` evaluations after the first best one.
    first_best = next(i for i, h in enumerate(history) if h["dev_accuracy"] == best)
    assert len(history) == first_best + 1 + 2
    assert evaluate_classification(tmp_path / "m", task["dev"])["accuracy"] == pytest.approx(best)


def test_lora_from_a_trained_body_saves_plain_model_and_adapter(
    finetuned: dict[str, object], task: dict[str, Path], tmp_path: Path
) -> None:
    """LoRA + a fresh head on a body that already knows the task (the full fine-tune's, loaded as
    the pretrained body), saved merged (a plain classifier directory) and as peft adapter files."""
    out = tmp_path / "lora"
    cfg = tiny_finetune_config(task, method="lora", lr=5e-3, epochs=1, lora_r=4)
    result = finetune_classification(task["tokenizer"], finetuned["dir"], TINY_MODEL, cfg, out)
    assert result["method"] == "lora" and result["trainable_parameters"] < result["total_parameters"] / 3
    assert result["dev_accuracy"] > 0.9

    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    saved = load_state_dict(out)
    assert not any("lora" in k or "modules_to_save" in k or "base_model" in k for k in saved)
    assert evaluate_classification(out, task["dev"])["accuracy"] == pytest.approx(result["dev_accuracy"])


def test_distilled_student_is_smaller_and_reports_its_teacher(
    finetuned: dict[str, object], task: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "student"
    cfg = tiny_finetune_config(task, distill_teacher=str(finetuned["dir"]), student_layers=1, epochs=1)
    result = finetune_classification(task["tokenizer"], None, TINY_MODEL, cfg, out)
    assert result["teacher_dev_accuracy"] == pytest.approx(finetuned["result"]["dev_accuracy"])
    assert result["student_parameters"] < result["teacher_parameters"]
    assert result["dev_accuracy"] > 0.9
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["num_layers"] == 1 and config["distilled_from"] == str(finetuned["dir"])
    assert evaluate_classification(out, task["dev"])["accuracy"] == pytest.approx(result["dev_accuracy"])

    other_teacher = tmp_path / "other_teacher"
    shutil.copytree(finetuned["dir"], other_teacher)
    (other_teacher / "tokenizer" / "spm.model").write_bytes(b"a teacher with another vocabulary")
    with pytest.raises(ConfigError, match="another tokenizer"):
        finetune_classification(
            task["tokenizer"],
            None,
            TINY_MODEL,
            replace(cfg, distill_teacher=str(other_teacher)),
            tmp_path / "x",
        )


def test_sentence_pair_task_uses_the_second_segment(task: dict[str, Path], tmp_path: Path) -> None:
    """The label is decided by the second text's sentiment word only; the first is neutral filler."""
    rng = random.Random(5)
    for split, n, seed in (("train", 500, 3), ("dev", 150, 4)):
        rows = [
            {"a": " ".join(rng.choices(NEUTRAL, k=5)), "b": s, "label": y}
            for s, y in sentiment_sentences(n, seed)
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_finetune_config(
        task,
        train_path=str(tmp_path / "train.jsonl"),
        dev_path=str(tmp_path / "dev.jsonl"),
        text_field="a",
        text_pair_field="b",
        epochs=3,
    )
    result = finetune_classification(task["tokenizer"], None, TINY_MODEL, cfg, tmp_path / "pair")
    assert result["dev_accuracy"] > 0.9
    # evaluate reads the pair field the model was trained with from its config.
    report = evaluate_classification(tmp_path / "pair", tmp_path / "dev.jsonl", text_field="a")
    assert report["accuracy"] == pytest.approx(result["dev_accuracy"])
    predictor = ClassifierPredictor(tmp_path / "pair")
    labels = [
        r["label"] for r in predictor.predict(["the film", "the film"], text_pairs=["wonderful", "awful"])
    ]
    assert labels == ["positive", "negative"]
