"""The per-worker pretraining loop that Ray Train's ``TorchTrainer`` runs on every worker.

The objective follows the model family (``plm_core.objectives.registry``): MLM, whole-word or span
masking (+ NSP/SOP) for the encoder, next-token prediction for the decoder, span corruption or
denoising for seq2seq. Every objective is a collator ``ids -> model kwargs``, so one loop trains
all of them with ``model(**batch)["loss"]``.

``Pretrainer`` is one worker's share of the work (model, optimizer, data order, a step, an
evaluation, checkpoints) and knows nothing of Ray, so tests drive it in-process.
``train_loop_per_worker`` adds what Ray provides: rank, device, DDP, checkpoint reporting, resume.

Speed: bf16 autocast on GPU (``precision``), optional ``torch.compile``, fused AdamW, gradient
accumulation over ``grad_accum_steps`` micro-batches with DDP's gradient all-reduce skipped on all
but the last (``no_sync``), and the sparse MLM head of the models (logits only at masked positions).

Determinism: the data order is a seeded permutation per epoch over a global sample stream that
ranks read strided (rank r takes samples r, r + world, ...), and the masks and dropout of update
``s`` on rank ``r`` come from a seed derived from ``(seed, s, r)``. A resumed run therefore
replays exactly the batches and randomness the interrupted one would have seen. Micro-batch ``m``
of an update takes the next ``batch_size x world`` samples of the stream after micro-batch
``m - 1``, so one update of k micro-batches of B reads the same samples as one update of k·B.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn

from plm_core.config import ModelConfig, PretrainConfig
from plm_core.data.loader import PackedSequences
from plm_core.errors import ConfigError
from plm_core.models.encoder import IGNORE_INDEX
from plm_core.models.factory import pretraining_model
from plm_core.models.io import load_weights
from plm_core.objectives.registry import build_collator, check_objectives
from plm_core.objectives.sentence_order import SentencePairs
from plm_core.train.checkpoint import (
    TrainerState,
    capture_rng_state,
    load_checkpoint,
    read_optimizer_state,
    read_rng_states,
    read_scheduler_state,
    read_trainer_state,
    restore_rng_state,
    save_checkpoint,
)
from plm_core.train.fsdp import full_state, is_sharded, load_full_state, shard_model
from plm_core.train.mfu import count_params, device_peak_flops, flops_per_token, mfu
from plm_core.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

# Domains of derived seeds, so that e.g. the masks and the dropout of step 3 draw independently.
_MASKS, _DROPOUT, _EVAL, _ORDER = 0, 1, 2, 3


PRECISIONS = ("auto", "bf16", "fp32")
STRATEGIES = ("ddp", "fsdp")


def derived_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from a tuple of small ints (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0])


def check_speed_options(cfg: PretrainConfig) -> None:
    """The switches of the training step, checked before any worker starts."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"pretrain.precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"pretrain.strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if cfg.grad_accum_steps < 1:
        raise ConfigError(f"pretrain.grad_accum_steps must be >= 1, got {cfg.grad_accum_steps}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError(f"pretrain.min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")


def model_flops_per_token(model: nn.Module, model_cfg: ModelConfig, seq_len: int) -> float:
    """``6·N + 12·L·d·T`` for this model (L counts both stacks of an encoder-decoder)."""
    layers = model_cfg.num_layers
    if model_cfg.family == "seq2seq":
        layers += model_cfg.num_decoder_layers or model_cfg.num_layers
    return flops_per_token(count_params(model), layers, model_cfg.hidden_size, seq_len)


class Pretrainer:
    """One worker of pretraining on a packed token directory.

    ``config`` is the ``train_loop_config`` built by ``plm_core.train.distributed.pretrain``:
    ``pack_dir``, ``tokenizer`` (tokenizer.json as a dict), ``model`` and ``pretrain`` (asdict of
    ``ModelConfig`` / ``PretrainConfig``), and ``tokenizer_dir`` where an objective needs the
    SentencePiece pieces (whole-word and span masking, BART sentence permutation). ``wrap_model``
    moves the model to its device and wraps it for data parallelism (Ray's ``prepare_model``);
    without it the model stays unwrapped. ``raw_model`` is always the unwrapped, uncompiled module
    (what checkpoints save and evaluation runs); ``model`` is what the training step calls.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.cfg = PretrainConfig(**config["pretrain"])
        self.model_cfg = ModelConfig(**config["model"])
        check_objectives(self.model_cfg.family, self.cfg)
        check_speed_options(self.cfg)
        self.collate = _collator(config, self.cfg)
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")

        torch.manual_seed(self.cfg.seed)  # the same initial weights on every rank
        self.raw_model = pretraining_model(self.model_cfg, self.cfg)
        if self.cfg.init_from:  # continued pretraining; a resumed checkpoint overrides it in restore()
            load_weights(self.raw_model, Path(self.cfg.init_from))
        # The DDP wrapper (or the bare module): its no_sync() skips the all-reduce of inner micro-steps.
        self.parallel_model: nn.Module = (
            wrap_model(self.raw_model) if wrap_model else self.raw_model.to(self.device)
        )
        self.model: nn.Module = (
            torch.compile(self.parallel_model) if self.cfg.compile else self.parallel_model
        )
        self.optimizer = build_optimizer(self.raw_model, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.scheduler = build_scheduler(
            self.optimizer,
            warmup_steps=self.cfg.warmup_steps,
            max_steps=self.cfg.max_steps,
            schedule=self.cfg.lr_schedule,
            min_lr_ratio=self.cfg.min_lr_ratio,
        )
        self.flops_per_token = model_flops_per_token(self.raw_model, self.model_cfg, self.cfg.seq_len)
        self.train_data, self.val_data = (
            _dataset(config, self.cfg, split) for split in ("train", "validation")
        )
        self.state = TrainerState()
        self._orders: dict[int, torch.Tensor] = {}  # epoch -> permutation of the train sequences

    # -- data -------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(derived_seed(self.cfg.seed, _ORDER, epoch))
            self._orders[epoch] = torch.randperm(len(self.train_data), generator=g)
        return self._orders[epoch]

    def train_indices(self, samples_seen: int, micro: int = 0) -> torch.Tensor:
        """This rank's sequence indices [B] for micro-batch ``micro`` of the update starting at
        global sample ``samples_seen``."""
        B, n = self.cfg.batch_size, len(self.train_data)
        start = samples_seen + micro * B * self.world_size
        positions = start + self.rank + self.world_size * torch.arange(B)  # [B] in the stream
        epochs, offsets = positions // n, positions % n
        for stale in [e for e in self._orders if e < int(epochs.min())]:
            del self._orders[stale]
        return torch.stack([self._epoch_order(int(e))[o] for e, o in zip(epochs, offsets, strict=True)])

    def _batch(
        self, data: PackedSequences | SentencePairs, indices: torch.Tensor, seed: int
    ) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for ``indices``, corrupted with randomness from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        if isinstance(data, SentencePairs):
            batch = data.batch(indices, g)  # [CLS] A [SEP] B [SEP] rows + segment ids + labels
            batch.update(self.collate(batch["input_ids"], g))
        else:
            batch = self.collate(torch.stack([data[int(i)] for i in indices]), g)  # from [B, T]
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_batch(self, micro: int = 0) -> dict[str, torch.Tensor]:
        """Micro-batch ``micro`` of the next update on this rank (``input_ids``, ``labels``, ...)."""
        indices = self.train_indices(self.state.samples_seen, micro)
        seed_parts = (self.cfg.seed, _MASKS, self.state.step, self.rank) + ((micro,) if micro else ())
        return self._batch(self.train_data, indices, derived_seed(*seed_parts))

    # -- steps ------------------------------------------------------------------------------

    def _autocast(self) -> torch.autocast:
        # "auto": bf16 on GPU (DESIGN section 4); CPU stays fp32, where bf16 matmuls are rarely faster.
        p = self.cfg.precision
        enabled = p == "bf16" or (p == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _no_sync(self, inner: bool) -> AbstractContextManager[Any]:
        """DDP's ``no_sync`` (FSDP: ``set_requires_gradient_sync(False)``) on inner micro-steps:
        gradients accumulate locally, and only the last micro-step's backward all-reduces (FSDP:
        reduce-scatters) them, one collective per update instead of k."""
        if inner and hasattr(self.parallel_model, "no_sync"):
            return self.parallel_model.no_sync()
        if hasattr(self.parallel_model, "set_requires_gradient_sync"):
            self.parallel_model.set_requires_gradient_sync(not inner)
        return nullcontext()

    def forward_backward(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Accumulate the gradients of one update over ``micro_batches``; return its mean loss.

        Each micro-batch's mean loss is weighted by its share of the update's target tokens over
        all ranks (``world x count / global count``, DDP then averages over ranks), so k
        micro-batches give the gradient of one batch of their union, however the masked tokens
        fall. The token counts cost one small all-reduce per update.
        """
        counts = torch.stack([(b["labels"] != IGNORE_INDEX).sum() for b in micro_batches]).double()
        total = self._all_reduce_sum(counts.sum().clone()).clamp_min(1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro_batches):
            with self._no_sync(inner=i < len(micro_batches) - 1):
                with self._autocast():
                    loss = self.model(**batch)["loss"]
                (loss * (counts[i] * self.world_size / total).to(loss.dtype)).backward()
            loss_sum += loss.detach().double() * counts[i]
        return (self._all_reduce_sum(loss_sum) / total).item()

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t

    def train_step(self) -> dict[str, float]:
        """One update; returns {"loss" (per target token, over ranks), "lr", "grad_norm"} and
        advances the state."""
        started = time.perf_counter()
        micro_batches = [self.train_batch(m) for m in range(self.cfg.grad_accum_steps)]
        torch.manual_seed(derived_seed(self.cfg.seed, _DROPOUT, self.state.step, self.rank))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self.forward_backward(micro_batches)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor over the shards
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()

        s = self.state
        samples = self.cfg.batch_size * self.world_size * self.cfg.grad_accum_steps
        s.step += 1
        s.samples_seen += samples
        s.tokens_seen += samples * self.cfg.seq_len
        s.seconds += time.perf_counter() - started
        s.train_history.append({"step": s.step, "loss": mean_loss, "lr": lr})
        return {"loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss per target token and perplexity over ``eval_batches`` global batches of validation data.

        The batches and their masks are the same at every evaluation, so the curve compares like
        with like.
        """
        self.raw_model.eval()
        B, n = self.cfg.batch_size, len(self.val_data)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # [loss sum, masked tokens]
        for b in range(self.cfg.eval_batches):
            positions = b * B * self.world_size + self.rank + self.world_size * torch.arange(B)  # [B]
            batch = self._batch(
                self.val_data, positions % n, derived_seed(self.cfg.seed, _EVAL, b, self.rank)
            )
            with self._autocast():
                loss = self.raw_model(**batch)["loss"]
            masked = (batch["labels"] != IGNORE_INDEX).sum()  # target tokens weigh each batch's mean
            totals += torch.stack([loss.double() * masked, masked.double()])
        loss_sum, count = self._all_reduce_sum(totals).tolist()
        val = {"val_loss": loss_sum / max(count, 1.0), "perplexity": math.exp(loss_sum / max(count, 1.0))}
        self.state.val_history.append({"step": self.state.step, **val})
        return val

    # -- checkpoints ------------------------------------------------------------------------

    def gather_full_state(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Under FSDP, the unsharded model and optimizer states (a collective: all ranks call it,
        rank 0 gets them complete); None otherwise, where rank 0 already holds everything."""
        if not is_sharded(self.raw_model):
            return None
        return full_state(self.raw_model, self.optimizer)

    def save(
        self,
        ckpt_dir: Path,
        rng_states: list[dict[str, Any]] | None = None,
        gathered: tuple[dict[str, Any], dict[str, Any]] | None = None,
    ) -> None:
        """Write a checkpoint; ``rng_states`` are every rank's (``gather_rng_states``), default this
        one's; ``gathered`` is ``gather_full_state()`` (required under FSDP)."""
        model, optimizer_state = self.raw_model, None
        if is_sharded(self.raw_model):
            if gathered is None:
                raise RuntimeError("an FSDP checkpoint needs gather_full_state() from every rank first")
            model = pretraining_model(self.model_cfg, self.cfg)  # an unsharded CPU copy to write
            model.load_state_dict(gathered[0])
            optimizer_state = gathered[1]
        save_checkpoint(
            ckpt_dir,
            model=model,
            model_cfg=self.model_cfg,
            optimizer=self.optimizer,
            optimizer_state=optimizer_state,
            scheduler=self.scheduler,
            state=self.state,
            extra={"task": self.cfg.objective, "pretrain": asdict(self.cfg)},
            rng_states=rng_states,
        )

    def gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states in rank order (a collective: all ranks call it together)."""
        mine = capture_rng_state()
        if self.world_size == 1:
            return [mine]
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, mine)
        return states

    def restore(self, ckpt_dir: Path) -> None:
        if is_sharded(self.raw_model):  # every rank reads the full state and keeps its shard
            full = pretraining_model(self.model_cfg, self.cfg)
            load_weights(full, Path(ckpt_dir))
            load_full_state(self.raw_model, self.optimizer, full.state_dict(), read_optimizer_state(ckpt_dir))
            self.scheduler.load_state_dict(read_scheduler_state(ckpt_dir))
            self.state = read_trainer_state(ckpt_dir)
        else:
            self.state = load_checkpoint(
                ckpt_dir, model=self.raw_model, optimizer=self.optimizer, scheduler=self.scheduler
            )
        rng = read_rng_states(ckpt_dir)
        if len(rng) == self.world_size:  # another world size: the derived seeds alone carry on
            restore_rng_state(rng[self.rank])


def _dataset(config: dict[str, Any], cfg: PretrainConfig, split: str) -> PackedSequences | SentencePairs:
    if cfg.sentence_objective:
        pad_id = int(config["tokenizer"]["pad_id"])
        return SentencePairs(
            config["pack_dir"], split, cfg.seq_len, kind=cfg.sentence_objective, pad_id=pad_id
        )
    return PackedSequences(config["pack_dir"], split, cfg.seq_len)


def _collator(config: dict[str, Any], cfg: PretrainConfig) -> Any:
    """The objective's batch builder; loads the SentencePiece model only when pieces are needed."""
    word_start = sentence_ends = None
    needs_pieces = cfg.objective in ("wwm", "span") or (
        cfg.objective == "denoising" and cfg.permute_sentences
    )
    if needs_pieces:
        from plm_core.objectives.denoising import sentence_end_ids
        from plm_core.objectives.mlm import word_start_mask
        from plm_core.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(config["tokenizer_dir"])
        word_start, sentence_ends = word_start_mask(tokenizer), sentence_end_ids(tokenizer)
    return build_collator(
        cfg.objective,
        tokenizer_meta=config["tokenizer"],
        cfg=cfg,
        word_start=word_start,
        sentence_end_ids=sentence_ends,
    )


class _MlflowMetrics:
    """Rank 0's metric logger: an explicit client and run id, no global mlflow state in workers.

    A tracking server that is briefly unreachable must not kill hours of training, so failures
    are logged and the step goes on.
    """

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key=k, value=float(v), timestamp=now, step=step) for k, v in values.items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as e:  # any tracking failure is non-fatal, see the class docstring
            log.warning("MLflow logging failed at step %d: %s", step, e)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _wrapper(cfg: PretrainConfig) -> Callable[[nn.Module], nn.Module]:
    """DDP through Ray's ``prepare_model`` (device placement, DDP only when world size > 1), or FSDP."""
    if cfg.strategy == "fsdp":
        device = ray.train.torch.get_device()
        return lambda model: shard_model(model, device)
    return ray.train.torch.prepare_model


def _inject_fault(fault: dict[str, Any] | None, step: int, rank: int) -> None:
    """Chaos drill for fault-tolerance tests: at ``fault["step"]`` on ``fault["rank"]``, once per
    ``fault["pid_file"]``, write this worker's PID there and wait to be SIGKILLed from outside
    (``"self_kill": true``: kill itself). The file also marks the fault as done, so the restarted
    worker group runs through."""
    if not fault or step != fault["step"] or rank != fault.get("rank", 0):
        return
    pid_file = Path(fault["pid_file"])
    if pid_file.exists():
        return
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)  # the watcher never reads a half-written PID
    if fault.get("self_kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(fault.get("wait_s", 120)))  # the test kills us long before this ends
    raise RuntimeError(f"fault injection at step {step}: nobody killed worker {os.getpid()}")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` as for ``Pretrainer`` plus ``mlflow_tracking_uri`` and
    ``mlflow_run_id`` (both may be None) and an optional ``fault_injection`` (see ``_inject_fault``)."""
    cfg = PretrainConfig(**config["pretrain"])
    torch.set_num_threads(cfg.threads_per_worker)
    ctx = ray.train.get_context()
    trainer = Pretrainer(
        config,
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=_wrapper(cfg),
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure, or a rerun of the same run name
        with checkpoint.as_directory() as d:
            trainer.restore(Path(d))
    tracker = None
    if trainer.rank == 0 and config.get("mlflow_tracking_uri") and config.get("mlflow_run_id"):
        tracker = _MlflowMetrics(config["mlflow_tracking_uri"], config["mlflow_run_id"])
    peak = device_peak_flops(cfg.peak_flops) if trainer.device.type == "cuda" or cfg.peak_flops else None

    state = trainer.state  # restore() replaced it; train_step() mutates this object from here on
    window_start = (state.step, state.tokens_seen, state.seconds)  # of the current logging window
    while state.step < cfg.max_steps:
        _inject_fault(config.get("fault_injection"), state.step, trainer.rank)
        step_metrics = trainer.train_step()
        last = state.step == cfg.max_steps
        report: dict[str, float] = {"step": state.step, "loss": step_metrics["loss"]}
        if _due(state.step, cfg.log_every) or last:
            start_step, start_tokens, start_seconds = window_start
            window = [h["loss"] for h in state.train_history if h["step"] > start_step]
            # Rank 0's step time x all ranks' tokens: the ranks step in lockstep under DDP.
            throughput = (state.tokens_seen - start_tokens) / max(state.seconds - start_seconds, 1e-9)
            window_start = (state.step, state.tokens_seen, state.seconds)
            logged = {
                "loss": sum(window) / len(window),
                "lr": step_metrics["lr"],
                "grad_norm": step_metrics["grad_norm"],
                "tokens_per_second": throughput,
            }
            if peak:
                logged["mfu"] = mfu(throughput, trainer.flops_per_token, trainer.world_size, peak)
            if tracker:
                tracker.log(state.step, logged)
        if _due(state.step, cfg.eval_every) or last:
            val = trainer.evaluate()
            report.update(val)
            if tracker:
                tracker.log(state.step, val)
        if _due(state.step, cfg.checkpoint_every) or last:
            # ray.train.report is a barrier: every rank calls it at the same steps, and only rank 0
            # hands over a checkpoint (the weights are identical on all ranks under DDP), holding
            # every rank's RNG states.
            report["tokens_seen"] = state.tokens_seen
            rng_states, gathered = trainer.gather_rng_states(), trainer.gather_full_state()
            if trainer.rank == 0:
                with tempfile.TemporaryDirectory() as d:
                    trainer.save(Path(d), rng_states, gathered)
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(report)
