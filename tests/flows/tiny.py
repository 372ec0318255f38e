"""Tiny pipeline sizes shared by the flow tests."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_overrides(data: dict[str, Path]) -> list[str]:
    """Sizes that keep one whole pipeline run to about a minute on 2 cores."""
    return [
        "ingest.paths=" + json.dumps([str(data["corpus"])]),
        "clean.min_chars=100",
        "clean.validation_fraction=0.1",
        "tokenizer.vocab_size=600",
        "tokenizer.sample_sentences=20000",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.intermediate_size=64",
        "model.max_position=64",
        "pretrain.seq_len=64",
        "pretrain.batch_size=8",
        "pretrain.max_steps=12",
        "pretrain.warmup_steps=2",
        "pretrain.checkpoint_every=6",
        "pretrain.eval_every=6",
        "pretrain.eval_batches=2",
        "pretrain.log_every=2",
        f"finetune.train_path={data['train']}",
        f"finetune.dev_path={data['dev']}",
        "finetune.max_len=32",
        "finetune.epochs=1",
        "registry.model_name=plm-test-classifier",
    ]


def tiny_task_overrides(data: dict[str, Path], ner_name: str, qa_name: str) -> list[str]:
    """NER and QA on the CoNLL and SQuAD slices of ``tiny_data``, registered under the given names."""
    return [
        f"ner.train_path={data['conll_train']}",
        f"ner.dev_path={data['conll_valid']}",
        f"ner.eval_path={data['conll_test']}",
        "ner.max_len=32",
        "ner.epochs=1",
        f"qa.train_path={data['squad']}",
        f"qa.dev_path={data['squad']}",
        "qa.max_len=64",
        "qa.doc_stride=32",
        "qa.max_query_len=16",
        "qa.epochs=1",
        "qa.eval_fraction=0.25",
        f"registry.ner_model_name={ner_name}",
        f"registry.qa_model_name={qa_name}",
    ]
