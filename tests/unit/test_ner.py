"""NER fine-tuning: first-subword alignment with the real SentencePiece tokenizer, windows for
long sentences, a tiny model that overfits a few sentences, the model directory, evaluation,
the predictor's character offsets, and bad data stopping before any training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plm_core.config import FinetuneConfig, PretrainConfig, model_preset
from plm_core.errors import InputError
from plm_core.finetune.conll import read_conll
from plm_core.finetune.ner import (
    build_token_classifier,
    encode_sentences,
    evaluate_ner,
    finetune_ner,
    pad_windows,
    predict_word_probs,
)
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.factory import pretraining_model
from plm_core.models.io import save_model
from plm_core.serving.ner import NerPredictor, split_words
from plm_core.tokenizer import Tokenizer

# Sentences over the fixture tokenizer's vocabulary plus names it has never seen (those split
# into several pieces). Entities depend on the word, so a tiny model can memorise them.
TRAIN_CONLL = """-DOCSTART- -X- -X- O

the NN B-NP O
captain NN I-NP O
saw VB B-VP O
London NNP B-NP B-LOC
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
walked VB B-VP O
to TO B-PP O
the DT B-NP O
river NN I-NP O

Reuters NNP B-NP B-ORG
said VB B-VP O
Peter NNP B-NP B-PER
was VB B-VP O
in IN B-PP O
New NNP B-NP B-LOC
York NNP I-NP I-LOC

a DT B-NP O
quiet JJ I-NP O
village NN I-NP O
near IN B-PP O
London NNP B-NP B-LOC

Blackburn NNP B-NP B-PER
and CC O O
Reuters NNP B-NP B-ORG
were VB B-VP O
there RB O O
"""

LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _tiny_model(**overrides):
    sizes = dict(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2, max_position=64)
    return model_preset("tiny", **{**sizes, **overrides})


def _cfg(train: Path, dev: Path, **overrides) -> FinetuneConfig:
    base = FinetuneConfig(
        task="ner", train_path=str(train), dev_path=str(dev), max_len=32, batch_size=2, epochs=40,
        lr=5e-3, warmup_ratio=0.0, threads=1, seed=0,
    )  # fmt: skip
    return replace(base, **overrides)


def test_first_subword_alignment_exact(data_run) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    # "\u200b" (zero-width space) is not whitespace for str.split but normalises to nothing.
    words = ["the", "captain", "London", "river", "\u200b"]
    pieces = [tok.sp.encode(w, out_type=int) for w in words]
    assert [len(p) for p in pieces[:4]] == [1, 1, 7, 1] and pieces[4] == []  # handmade expectation
    encoded = encode_sentences(tok, [words], max_len=32, tag_ids=[[0, 0, 1, 0, 0]])
    (window,) = encoded.windows
    expected_ids = [tok.cls_id, *pieces[0], *pieces[1], *pieces[2], *pieces[3], tok.unk_id, tok.sep_id]
    assert window.input_ids == expected_ids
    assert window.word_starts == [1, 2, 3, 10, 11]
    # Labels only on each word's first piece; London's 6 continuation pieces, CLS and SEP: -100.
    assert window.labels == [IGNORE_INDEX, 0, 0, 1] + [IGNORE_INDEX] * 6 + [0, 0, IGNORE_INDEX]
    # Per-word encoding is the sentence encoding: pieces never cross whitespace.
    assert window.input_ids[1:-2] == tok.encode([" ".join(words[:4])])[0]
    assert encoded.counts == {"sentences": 1, "windows": 1, "split_sentences": 0, "truncated_words": 0}


def test_long_sentences_are_split_into_windows_not_dropped(data_run) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    long_words = ["the", "captain", "London"] * 5  # 9 pieces per repeat: 45 pieces
    very_long_word = "x" * 40
    sentences = [long_words, ["river"], ["garden", very_long_word, "river"]]
    tags = [[i % 2 for i in range(len(s))] for s in sentences]
    encoded = encode_sentences(tok, sentences, max_len=12, tag_ids=tags)
    assert all(len(w.input_ids) <= 12 for w in encoded.windows)
    # Every word of every sentence is in exactly one window, in order.
    for s, words in enumerate(sentences):
        covered = [
            w.first_word + k for w in encoded.windows if w.sentence == s for k in range(len(w.word_starts))
        ]
        assert covered == list(range(len(words)))
    for w in encoded.windows:
        labelled = [lab for lab in w.labels if lab != IGNORE_INDEX]
        assert labelled == tags[w.sentence][w.first_word : w.first_word + len(w.word_starts)]
    assert encoded.counts["split_sentences"] == 2
    assert encoded.counts["truncated_words"] == 1  # the 40-character word keeps its first 10 pieces
    assert encoded.counts["windows"] == len(encoded.windows) > 3
    # Predictions join the windows back: one row per word, per sentence.
    model, _ = build_token_classifier(_tiny_model(), 3, tok.vocab_size, None)
    probs = predict_word_probs(model, encoded, tok.pad_id, batch_size=2)
    assert [p.shape for p in probs] == [(15, 3), (1, 3), (3, 3)]
    batch = pad_windows(encoded.windows[:2], tok.pad_id)
    assert batch["labels"][batch["attention_mask"] == 0].eq(IGNORE_INDEX).all()


@pytest.fixture(scope="module")
def overfit_run(data_run, tmp_path_factory):
    """A tiny encoder trained from random init on 5 sentences, scored on the same file."""
    root = tmp_path_factory.mktemp("ner")
    train = root / "train.conll"
    train.write_text(TRAIN_CONLL)
    cfg = _cfg(train, train)
    tok = Tokenizer.load(data_run.tokenizer_dir)
    torch.manual_seed(cfg.seed)
    untrained, _ = build_token_classifier(_tiny_model(), len(LABELS), tok.vocab_size, None)
    result = finetune_ner(data_run.tokenizer_dir, None, _tiny_model(), cfg, root / "model")
    return root, train, result, untrained


def test_tiny_model_overfits_and_writes_the_model_dir(overfit_run, data_run) -> None:
    root, train, result, untrained = overfit_run
    model_dir = root / "model"
    # Loss from ~ln(7) = 1.95 at random init to near zero; dev (= train) entity F1 1.
    tok = Tokenizer.load(data_run.tokenizer_dir)

    data = read_conll(train)
    index = {t: i for i, t in enumerate(LABELS)}
    encoded = encode_sentences(
        tok, [s.words for s in data.sentences], 32, [[index[t] for t in s.tags] for s in data.sentences]
    )
    with torch.no_grad():
        initial = untrained(**pad_windows(encoded.windows, tok.pad_id))["loss"].item()
    assert initial > 1.5
    assert result["train_loss"] < 0.1
    assert result["dev_f1"] == pytest.approx(1.0)
    assert result["train_examples"] == 5 and result["train_windows"] == 5
    config = json.loads((model_dir / "config.json").read_text())
    assert config["task"] == "ner" and config["labels"] == LABELS and config["max_len"] == 32
    assert config["finetune"]["tag_column"] == -1 and config["pretrained_from"] is None
    assert {p.name for p in (model_dir / "tokenizer").iterdir()} == {"spm.model", "tokenizer.json"}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["dev_f1"] == result["dev_f1"] and metrics["history"]
    # The reloaded directory scores what training measured.
    report = evaluate_ner(model_dir, train)
    assert report["task"] == "ner" and report["headline"] == "f1"
    assert report["f1"] == pytest.approx(result["dev_f1"])
    assert report["n"] == 5 and set(report["per_entity"]) == {"LOC", "ORG", "PER"}
    # PER: "Peter Blackburn", "Peter", "Blackburn"; LOC: London, New York, London; ORG: Reuters x2.
    assert [report["per_entity"][k]["support"] for k in ("LOC", "ORG", "PER")] == [3, 2, 3]

    # Another layout of the same sentences (tag first, tab-separated, BIOES) scores the same,
    # whether the switches come as keywords or in a FinetuneConfig (the evaluate stage's way).
    def to_bioes(tags: list[str]) -> list[str]:
        ends = [i + 1 == len(tags) or tags[i + 1] != "I-" + t[2:] for i, t in enumerate(tags)]
        return [
            t if t == "O" else {"B": "BS", "I": "IE"}[t[0]][end] + t[1:]
            for t, end in zip(tags, ends, strict=True)
        ]

    sentences = [
        "\n".join(f"{t}\t{w}" for w, t in zip(s.words, to_bioes(s.tags), strict=True)) for s in data.sentences
    ]
    other = root / "other.tsv"
    other.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(sentences) + "\n")
    assert "S-LOC\tLondon\n" in other.read_text() and "E-LOC\tYork\n" in other.read_text()
    fmt = {"token_column": 1, "tag_column": 0, "separator": "\t", "tag_scheme": "bioes"}
    assert evaluate_ner(model_dir, other, **fmt)["f1"] == pytest.approx(report["f1"])
    cfg = replace(FinetuneConfig(), token_column=1, tag_column=0, column_separator="\t", tag_scheme="bioes")
    assert evaluate_ner(model_dir, other, cfg)["n_true_entities"] == report["n_true_entities"] == 8


def test_predictor_offsets_round_trip(overfit_run) -> None:
    root, _, _, _ = overfit_run
    predictor = NerPredictor(root / "model")
    texts = [
        "  Peter   Blackburn walked to\tthe river",
        "Reuters said Peter was in New  York",
        "",
        "the captain saw London .",
    ]
    results = predictor.predict(texts)
    assert results[2] == []
    for text, entities in zip(texts, results, strict=True):
        for e in entities:
            assert text[e["start"] : e["end"]] == e["text"]
            assert 0.0 < e["score"] <= 1.0
    # The memorised sentences come back with their entities, whitespace inside kept verbatim.
    assert [(e["entity"], e["text"]) for e in results[0]] == [("PER", "Peter   Blackburn")]
    assert [(e["entity"], e["text"]) for e in results[1]] == [
        ("ORG", "Reuters"),
        ("PER", "Peter"),
        ("LOC", "New  York"),
    ]
    assert [(e["entity"], e["start"], e["end"]) for e in results[3]] == [("LOC", 16, 22)]
    assert split_words(" a  bc\n") == [("a", 1, 2), ("bc", 4, 6)]
    with pytest.raises(TypeError):
        predictor.predict("a single string")


def test_bad_data_stops_before_training(data_run, tmp_path: Path, overfit_run) -> None:
    train = tmp_path / "train.conll"
    train.write_text(TRAIN_CONLL)
    dev = tmp_path / "dev.conll"
    dev.write_text("Paris NNP B-NP B-LOC\nis VB B-VP O\n\nthe DT B-NP B-DATE\n")  # DATE: not in train
    out = tmp_path / "model"
    with pytest.raises(InputError) as err:
        finetune_ner(data_run.tokenizer_dir, None, _tiny_model(), _cfg(train, dev), out)
    assert (err.value.path, err.value.line) == (str(dev), 4)
    assert "not in the label set" in err.value.problem
    bad_columns = tmp_path / "bad.conll"
    bad_columns.write_text(TRAIN_CONLL.replace("river NN I-NP O", "river NN O"))
    with pytest.raises(InputError, match=r"bad\.conll:14: 3 columns, expected 4"):
        finetune_ner(data_run.tokenizer_dir, None, _tiny_model(), _cfg(bad_columns, train), out)
    assert not out.exists()
    # Evaluation reads against the model's labels: an unseen tag is an error too.
    with pytest.raises(InputError, match=r"dev\.conll:4: tag 'B-DATE'"):
        evaluate_ner(overfit_run[0] / "model", dev)


@pytest.mark.parametrize(
    ("family", "objective"), [("encoder", "mlm"), ("decoder", "clm"), ("seq2seq", "span_corruption")]
)
def test_finetune_from_a_pretrained_body(data_run, tmp_path: Path, family: str, objective: str) -> None:
    tok = Tokenizer.load(data_run.tokenizer_dir)
    body_cfg = _tiny_model(vocab_size=tok.vocab_size) if family == "encoder" else model_preset(
        "tiny", family, vocab_size=tok.vocab_size, hidden_size=32, num_heads=2, intermediate_size=64,
        num_layers=1, max_position=64,
    )  # fmt: skip
    pretrained = pretraining_model(body_cfg, PretrainConfig(objective=objective))
    save_model(pretrained, body_cfg, tmp_path / "pretrain")
    train = tmp_path / "train.conll"
    train.write_text(TRAIN_CONLL)
    # A different model_cfg is ignored: the checkpoint's config decides the sizes.
    cfg = _cfg(train, train, epochs=1, max_steps=2, lr=0.0)
    result = finetune_ner(
        data_run.tokenizer_dir, tmp_path / "pretrain", _tiny_model(hidden_size=64), cfg, tmp_path / "m"
    )
    assert result["steps"] == 2
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["family"] == family and config["model"]["hidden_size"] == 32
    assert config["pretrained_from"] == str(tmp_path / "pretrain")
    # lr 0: the saved body is exactly the pretrained one.

    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    body = {k: t for k, t in pretrained.state_dict().items() if k.startswith("encoder.") and k in saved}
    assert len(body) >= 10
    for name, t in body.items():
        assert torch.equal(saved[name], t), name


def test_early_stopping_on_dev_f1(data_run, tmp_path: Path) -> None:
    train = tmp_path / "train.conll"
    train.write_text(TRAIN_CONLL)
    # lr 0: dev F1 never improves on the first evaluation, so patience 1 stops at the second.
    # 5 sentences in batches of 2 = 3 steps per epoch, scored after steps 1, 2 and 3.
    cfg = _cfg(train, train, epochs=5, lr=0.0, patience=1)
    result = finetune_ner(data_run.tokenizer_dir, None, _tiny_model(), cfg, tmp_path / "m")
    assert result["stopped_early"] and result["steps"] == 2
    history = json.loads((tmp_path / "m" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2]
