"""Sequence classification as text-to-text, the way T5 does it (``FinetuneConfig.seq2seq_head="text"``).

The target of an example is its label *name* as text ("positive" + ``</s>``); the whole
encoder-decoder (``Seq2SeqForConditionalGeneration``) trains with its own seq2seq LM loss on the
target tokens, so a pretrained checkpoint's decoder and LM head are used rather than thrown away
as the pooled head (``Seq2SeqForSequenceClassification``, still the default) does.

Prediction is rank classification: every label's target sequence is scored by its total
log-likelihood under the decoder (teacher forcing: one batched decoder forward per label over an
encoder output computed once per batch), the best-scoring label wins, and probabilities are the
softmax over the label scores. Free generation could emit a string that is no label at all;
ranking the known targets cannot, and it is what the T5 paper evaluates with.

The inputs are the same ``[CLS] text [SEP]`` (or pair) sequences as the pooled head's, so the two
heads are compared on equal inputs; the encoder simply learns what those control pieces mean.

This module's top level imports only what serving needs (``serving.classifier`` scores with it);
the training loop's pieces are imported inside ``finetune_text2text``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plm_core.config import FinetuneConfig, ModelConfig
from plm_core.errors import ConfigError
from plm_core.finetune.model_init import build_task_model
from plm_core.finetune.task_data import (
    ClassificationData,
    encode_inputs,
    length_sorted_batches,
    model_inputs,
)
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.io import load_weights
from plm_core.models.seq2seq import Seq2SeqForConditionalGeneration, shift_right
from plm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

HEAD_KEY = "classification_head"  # config.json key; "text" marks a text-to-text classifier
TEXT_HEAD = "text"
HEADS = ("pooled", TEXT_HEAD)
EVAL_BATCH_SIZE = 128


def check_head(cfg: FinetuneConfig, family: str) -> bool:
    """True when ``cfg`` asks for the text-to-text head; errors for unknown heads and for a body
    that has no decoder to generate the label text with."""
    if cfg.seq2seq_head not in HEADS:
        raise ConfigError(f"finetune.seq2seq_head {cfg.seq2seq_head!r}; choose one of {list(HEADS)}")
    if cfg.seq2seq_head != TEXT_HEAD:
        return False
    if family != "seq2seq":
        raise ConfigError(
            f"finetune.seq2seq_head='text' needs an encoder-decoder (seq2seq) model, got family {family!r}"
        )
    if cfg.method != "full" or cfg.distill_teacher:
        raise ConfigError("finetune.seq2seq_head='text' supports method='full' without distill_teacher only")
    return True


def label_targets(tokenizer: Tokenizer, labels: list[str]) -> list[list[int]]:
    """Each label name's token ids + ``</s>``: the decoder target of that class.

    Two labels that tokenize to the same ids could never be told apart by their likelihood, so
    that is an error naming them (e.g. names made only of pieces the tokenizer maps to [UNK]).
    """
    targets = [[*ids, tokenizer.eos_id] for ids in tokenizer.encode(list(labels))]
    seen: dict[tuple[int, ...], str] = {}
    for name, target in zip(labels, targets, strict=True):
        key = tuple(target)
        if key in seen:
            raise ConfigError(
                f"labels {seen[key]!r} and {name!r} tokenize to the same ids {list(key)}; "
                "text-to-text classification cannot tell them apart"
            )
        seen[key] = name
        if tokenizer.unk_id in target:
            log.warning("label %r contains [UNK] pieces: %s", name, target)
    return targets


def text2text_model(body_cfg: ModelConfig) -> Seq2SeqForConditionalGeneration:
    return Seq2SeqForConditionalGeneration(body_cfg)


def build_text2text(
    model_cfg: ModelConfig, vocab_size: int, pretrained_dir: Path | None
) -> tuple[Seq2SeqForConditionalGeneration, ModelConfig]:
    """The encoder-decoder LM, from a pretrained seq2seq checkpoint (all of it: encoder, decoder
    and LM head) or from random init; returns the model and the body config it was built with."""

    def make(body_cfg: ModelConfig) -> Seq2SeqForConditionalGeneration:
        if body_cfg.family != "seq2seq":
            raise ConfigError(
                f"finetune.seq2seq_head='text' needs a seq2seq model, got family {body_cfg.family!r}"
            )
        return text2text_model(body_cfg)

    return build_task_model(make, model_cfg, vocab_size, pretrained_dir, load=load_weights)


def target_batch(targets: list[list[int]]) -> torch.Tensor:
    """Targets [B, T] padded with -100 (no loss there), for ``model(labels=...)``."""
    width = max(len(t) for t in targets)
    out = torch.full((len(targets), width), IGNORE_INDEX, dtype=torch.long)
    for i, t in enumerate(targets):
        out[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return out


def _sequence_log_likelihood(
    model: Seq2SeqForConditionalGeneration,
    enc_hidden: torch.Tensor,
    enc_mask: torch.Tensor,
    target: list[int],
) -> torch.Tensor:
    """Summed log p(target | input) [B] of one target sequence for every row of a batch."""
    batch = enc_hidden.size(0)
    labels = torch.tensor(target, dtype=torch.long, device=enc_hidden.device).expand(batch, -1)  # [B, T]
    decoder_input_ids = shift_right(labels, model.decoder_start_token_id, model.cfg.pad_token_id)
    logits = model.decode(decoder_input_ids, enc_hidden, enc_mask)["logits"].float()  # [B, T, V]
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, labels[..., None]).squeeze(-1).sum(dim=-1)  # [B]


@torch.inference_mode()
def label_scores(
    model: Seq2SeqForConditionalGeneration,
    sequences: list[list[int]],
    targets: list[list[int]],
    pad_id: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> torch.Tensor:
    """Rank-classification scores [N, num_labels]: the total log-likelihood of each label's target
    given each input, rows in input order (batches are length-sorted to keep padding small)."""
    if not sequences:
        raise ValueError("no sequences to score")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty((len(sequences), len(targets)), dtype=torch.float32)
    for idx in length_sorted_batches([len(s) for s in sequences], batch_size):
        inputs = model_inputs([sequences[i] for i in idx], pad_id)
        input_ids, mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
        enc_hidden = model.encode(input_ids, mask)  # [B, S, H], once for every label
        columns = [_sequence_log_likelihood(model, enc_hidden, mask, t) for t in targets]
        out[idx] = torch.stack(columns, dim=-1).cpu()
    model.train(was_training)
    return out


class Text2TextBatches:
    """Encoded training/dev examples: input sequences and, per example, its label's target ids."""

    def __init__(
        self, tokenizer: Tokenizer, data: ClassificationData, max_len: int, targets: list[list[int]]
    ) -> None:
        self.sequences, _ = encode_inputs(tokenizer, data.texts, max_len, data.text_pairs)
        self.labels = data.label_ids
        self.targets = targets

    def batch(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """``model(**batch)`` arguments: input_ids, attention_mask and the target ``labels`` [B, T]."""
        inputs = model_inputs([self.sequences[i] for i in idx], pad_id)
        inputs["labels"] = target_batch([self.targets[self.labels[i]] for i in idx])
        return inputs

    def scores(self, model: Seq2SeqForConditionalGeneration, pad_id: int) -> torch.Tensor:
        return label_scores(model, self.sequences, self.targets, pad_id)


def text2text_scorer(
    dev: Text2TextBatches, pad_id: int, num_labels: int
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``trainer.fit``'s ``evaluate``: dev accuracy and macro F1 of rank classification."""
    from plm_core.finetune.metrics import accuracy, macro_f1

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        predicted = dev.scores(model, pad_id).argmax(dim=-1).tolist()  # type: ignore[arg-type]
        return {
            "dev_accuracy": accuracy(dev.labels, predicted),
            "dev_f1": macro_f1(dev.labels, predicted, num_labels),
        }

    return evaluate


def finetune_text2text(
    tokenizer_dir: Path,
    pretrained_dir: Path | None,
    model_cfg: ModelConfig,
    cfg: FinetuneConfig,
    out_dir: Path,
    train: ClassificationData,
    dev: ClassificationData,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> dict[str, Any]:
    """``finetune_classification`` for ``seq2seq_head="text"``: same loop settings, length-bucketed
    batches, best-on-dev weights and directory layout; config.json adds ``classification_head:
    "text"`` and the label targets, and the saved weights are the whole encoder-decoder."""
    from tqdm.auto import tqdm

    from plm_core.finetune.classification import bucketed_batches, trainer_config
    from plm_core.finetune.model_init import save_task_model
    from plm_core.finetune.peft import count_parameters
    from plm_core.finetune.trainer import fit

    started = time.perf_counter()
    tokenizer = Tokenizer.load(tokenizer_dir, num_threads=cfg.threads)
    num_labels = len(train.label_names)
    targets = label_targets(tokenizer, train.label_names)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model, body_cfg = build_text2text(model_cfg, tokenizer.vocab_size, pretrained_dir)
        if cfg.max_len > body_cfg.max_position:
            raise ConfigError(
                f"max_len {cfg.max_len} exceeds the model's max_position {body_cfg.max_position}"
            )
        encoded_train = Text2TextBatches(tokenizer, train, cfg.max_len, targets)
        encoded_dev = Text2TextBatches(tokenizer, dev, cfg.max_len, targets)
        parameters = count_parameters(model)
        rng = np.random.default_rng(cfg.seed)
        lengths = [len(s) for s in encoded_train.sequences]

        def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            order = bucketed_batches(lengths, cfg.batch_size, rng)
            for idx in tqdm(order, desc=f"text2text epoch {epoch + 1}/{cfg.epochs}", mininterval=2.0):
                yield encoded_train.batch(idx, tokenizer.pad_id)

        run = fit(
            model,
            batches,
            math.ceil(len(lengths) / cfg.batch_size),
            trainer_config(cfg),
            evaluate=text2text_scorer(encoded_dev, tokenizer.pad_id, num_labels),
            on_metrics=on_metrics,
        )
    finally:
        torch.set_num_threads(previous_threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu")
    extra = {
        "task": "classification",
        HEAD_KEY: TEXT_HEAD,
        "num_labels": num_labels,
        "labels": train.label_names,
        "label_targets": targets,
        "max_len": cfg.max_len,
        "finetune": asdict(cfg),
        "pretrained_from": str(pretrained_dir) if pretrained_dir is not None else None,
    }
    save_task_model(model, body_cfg, out_dir, extra, tokenizer_dir)
    result = {
        "dev_accuracy": run.best["dev_accuracy"],
        "dev_f1": run.best["dev_f1"],
        "train_loss": run.train_loss,
        "epochs": cfg.epochs,
        "steps": run.steps,
        "stopped_early": run.stopped_early,
        "train_examples": len(train),
        "method": cfg.method,
        "classification_head": TEXT_HEAD,
        **parameters.as_dict(),
        "seconds": time.perf_counter() - started,
    }
    metrics = {
        **result,
        "dev_examples": len(dev),
        "labels": train.label_names,
        "best": run.best,
        "history": run.history,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return result
