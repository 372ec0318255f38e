"""Extractive QA end to end on a tiny model: fine-tuning, the stored split, evaluation, the predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.errors import ConfigError, InputError
from plm_core.finetune.qa import evaluate_qa, finetune_qa
from plm_core.finetune.squad import eval_titles
from plm_core.serving.qa import QaPredictor

# Contexts in the words the session tokenizer (tests/unit/conftest.py: data_run) was trained on.
ARTICLES: dict[str, list[tuple[str, list[tuple[str, str | None]]]]] = {
    "Harbour": [
        (
            "the captain found a silver candle in the harbour . then she took the letter to the village in winter .",
            [
                ("what did the captain find", "a silver candle"),
                ("where did she take the letter", "the village"),
                ("when did she take the letter", "in winter"),
            ],
        )
    ],
    "Forest": [
        (
            "the ancient forest is quiet in the morning . people come to see the narrow river and the bright garden .",
            [
                ("what is quiet in the morning", "the ancient forest"),
                ("what do people come to see", "the narrow river"),
                ("who would make the candle", None),
            ],
        )
    ],
    "Window": [
        (
            "he would look out of the window when the gentle day was over . the letter was from his first journey .",
            [
                ("what was the letter from", "his first journey"),
                ("what would he look out of", "the window"),
                ("where is the silver harbour", None),
            ],
        )
    ],
}
TITLES = list(ARTICLES)
TINY = ModelConfig(
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    intermediate_size=128,
    max_position=128,
    dropout=0.0,
    attention_dropout=0.0,
)


def write_squad(path: Path, with_impossible: bool, indent: int | None = 1) -> Path:
    data = []
    n = 0
    for title, paragraphs in ARTICLES.items():
        paras = []
        for context, questions in paragraphs:
            qas: list[dict[str, Any]] = []
            for question, answer in questions:
                n += 1
                if answer is None:
                    if with_impossible:
                        qas.append(
                            {"id": f"q{n}", "question": question, "answers": [], "is_impossible": True}
                        )
                    continue
                qa: dict[str, Any] = {
                    "id": f"q{n}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": context.index(answer)}],
                }
                if with_impossible:
                    qa["is_impossible"] = False
                qas.append(qa)
            paras.append({"context": context, "qas": qas})
        data.append({"title": title, "paragraphs": paras})
    doc = {"version": "v2.0" if with_impossible else "1.1", "data": data}
    path.write_text(json.dumps(doc, indent=indent))
    return path


def _cfg(train: Path, dev: Path | str = "", **kw: Any) -> FinetuneConfig:
    base = dict(
        task="qa",
        train_path=str(train),
        dev_path=str(dev),
        max_len=36,
        doc_stride=8,  # contexts of ~25 tokens become several overlapping windows
        max_query_len=12,
        batch_size=4,
        epochs=2,
        lr=3e-3,
        threads=1,
    )
    return FinetuneConfig(**{**base, **kw})


def test_tiny_model_overfits_a_handful_of_questions(tmp_path: Path, data_run: Any) -> None:
    """Trained and scored on the same 7 questions (a separate dev file with the same questions,
    so the best-on-dev epoch is the best on train): a working loop learns them."""
    train = write_squad(tmp_path / "train.json", with_impossible=False)
    dev = write_squad(tmp_path / "dev.json", with_impossible=False, indent=None)  # other bytes: no split
    out = tmp_path / "model"
    result = finetune_qa(data_run.tokenizer_dir, None, TINY, _cfg(train, dev, epochs=40), out)
    assert result["train_examples"] == 7 and result["dev_examples"] == 7
    assert result["train_windows"] > 7  # doc stride made several windows per question
    assert result["dev_exact_match"] >= 6 / 7 * 100 - 1e-9, result
    report = evaluate_qa(out, train)
    assert report["split"] == "all" and report["n"] == 7  # trained without a split
    assert report["exact_match"] == pytest.approx(result["dev_exact_match"])
    assert report["task"] == "qa" and report["headline"] == "f1"

    predictor = QaPredictor(out)
    context, questions = ARTICLES["Window"][0]
    answers = predictor.predict([q for q, _ in questions[:2]], [context, context])
    assert [a["answer"] for a in answers] == ["his first journey", "the window"]
    for a in answers:
        assert context[a["start"] : a["start"] + len(a["answer"])] == a["answer"]
        assert 0.0 < a["score"] <= 1.0
    assert predictor.predict([], []) == []


def test_split_is_stored_and_evaluation_uses_the_held_out_articles(tmp_path: Path, data_run: Any) -> None:
    path = write_squad(tmp_path / "v2.json", with_impossible=True)
    seed = next(s for s in range(100) if len(eval_titles(TITLES, 0.4, s)) == 1)
    (held_out,) = eval_titles(TITLES, 0.4, seed)
    n_eval = len(ARTICLES[held_out][0][1])
    out = tmp_path / "model"
    cfg = _cfg(path, eval_fraction=0.4, split_seed=seed, epochs=1)
    result = finetune_qa(data_run.tokenizer_dir, None, TINY, cfg, out)
    assert (result["train_examples"], result["dev_examples"]) == (9 - n_eval, n_eval)
    assert result["squad_version"] == "2.0"

    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "qa" and config["squad_version"] == "2.0"
    assert (config["doc_stride"], config["max_answer_length"], config["max_len"]) == (8, 30, 36)
    split = config["qa_split"]
    assert split["eval_titles"] == [held_out] and split["seed"] == seed and split["eval_fraction"] == 0.4
    assert split["eval"]["questions"] == n_eval and split["train"]["articles"] == 2
    assert (out / "tokenizer" / "spm.model").is_file() and (out / "metrics.json").is_file()

    auto = evaluate_qa(out, path)  # the training file: only the held-out article
    assert (auto["split"], auto["n"], auto["articles"]) == ("eval", n_eval, 1)
    for key in ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh"):
        assert key in auto
    assert auto["HasAns_total"] + auto["NoAns_total"] == n_eval
    assert auto["f1"] == pytest.approx(result["dev_f1"])
    assert evaluate_qa(out, path, split="all")["n"] == 9
    assert evaluate_qa(out, path, split="train")["n"] == 9 - n_eval
    copy = tmp_path / "copy.json"
    copy.write_bytes(path.read_bytes())
    assert evaluate_qa(out, copy)["split"] == "eval"  # same bytes elsewhere: still the same file

    other = write_squad(tmp_path / "other.json", with_impossible=True, indent=None)
    assert evaluate_qa(out, other)["split"] == "all"
    for p in QaPredictor(out).predict(["who would make the candle"], [ARTICLES["Forest"][0][0]]):
        assert (p["start"] == -1) == (p["answer"] == "")
    with pytest.raises(ConfigError, match="split"):
        evaluate_qa(out, path, split="dev")


def test_bad_training_file_stops_before_training(tmp_path: Path, data_run: Any) -> None:
    path = write_squad(tmp_path / "bad.json", with_impossible=False)
    doc = json.loads(path.read_text())
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 2
    path.write_text(json.dumps(doc, indent=1))
    out = tmp_path / "model"
    with pytest.raises(InputError, match=r"bad\.json:\d+: data\[1\]\.paragraphs\[0\]\.qas\[0\]"):
        finetune_qa(data_run.tokenizer_dir, None, TINY, _cfg(path), out)
    assert not out.exists()
    with pytest.raises(ConfigError, match="train_path"):
        finetune_qa(data_run.tokenizer_dir, None, TINY, _cfg(""), out)


def test_v1_model_refuses_a_v2_file(tmp_path: Path, data_run: Any) -> None:
    v1 = write_squad(tmp_path / "v1.json", with_impossible=False)
    out = tmp_path / "model"
    dev = write_squad(tmp_path / "dev.json", with_impossible=False, indent=None)
    finetune_qa(data_run.tokenizer_dir, None, TINY, _cfg(v1, dev, epochs=1, max_train_examples=2), out)
    v2 = write_squad(tmp_path / "v2.json", with_impossible=True)
    with pytest.raises(InputError, match="v2.0"):
        evaluate_qa(out, v2)
