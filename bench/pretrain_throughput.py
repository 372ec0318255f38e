"""Pretraining throughput: our models beside HF transformers on the same batch, and Ray's overhead.

    .venv/bin/python bench/pretrain_throughput.py                       # BERT-base @128, GPT-2 124M @1024
    .venv/bin/python bench/pretrain_throughput.py --size tiny --seq-len 64 --batch 4 --steps 3 --no-compile

For each model (our ``BertForMaskedLM`` with its sparse MLM head at sequence 128, our
``GPTForCausalLM`` at sequence 1024) and for HF's ``BertForMaskedLM`` / ``GPT2LMHeadModel`` of the
same sizes, eager and ``torch.compile``: tokens/s of whole training steps (forward, backward, fused
AdamW) on one fixed batch, bf16 autocast on GPU and fp32 on CPU, and MFU = (6·N + 12·L·d·T) FLOPs
per token over the device's bf16 peak (``plm_core.train.mfu``; "n/a" on CPU unless --peak-flops).
The variants run back to back ``--repeat`` times and each figure is the median, so load from other
processes hits all of them alike. Then one Ray Train run with one worker against the bare
``Pretrainer`` loop on the same synthetic packed tokens: the step throughput both measure inside
the loop (Ray's per-step cost), and the Ray run's wall-clock time (start-up of the worker group).
Ratios printed: ours/HF eager, ours/HF compile, Ray 1 worker / bare loop.

On CPU start the bench with ``OMP_NUM_THREADS`` equal to ``--threads``: Ray starts its workers
with ``OMP_NUM_THREADS`` set to their CPU count, and on a loaded machine an OpenMP pool sized at
start-up and then narrowed by ``torch.set_num_threads`` made the bare loop 2-2.5x slower here,
which would read as Ray being faster than no Ray. The bench warns when the two differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plm_core.config import ModelConfig, PretrainConfig, model_preset  # noqa: E402
from plm_core.models.decoder import GPTForCausalLM  # noqa: E402
from plm_core.models.encoder import BertForMaskedLM  # noqa: E402
from plm_core.models.hf_gpt2 import to_hf_gpt2_config  # noqa: E402
from plm_core.models.io import to_hf_bert_config  # noqa: E402
from plm_core.objectives.mlm import mask_tokens  # noqa: E402
from plm_core.train.mfu import count_params, device_peak_flops, flops_per_token, mfu  # noqa: E402
from plm_core.train.optim import build_optimizer  # noqa: E402

# name -> (family, vocabulary, default sequence length, default per-device batch on GPU)
MODELS = {"bert": ("encoder", 30522, 128, 128), "gpt2": ("decoder", 50257, 1024, 16)}
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask of the synthetic vocabulary
MASK_ID = 4


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def model_config(name: str, size: str, vocab: int | None) -> ModelConfig:
    family, default_vocab, _, _ = MODELS[name]
    return model_preset(size, family, vocab_size=vocab or default_vocab)


def build_models(name: str, cfg: ModelConfig) -> dict[str, Callable[[], torch.nn.Module]]:
    """Constructors of ours and HF's model of the same sizes (built fresh per variant)."""
    import transformers

    if name == "bert":
        hf_cfg = transformers.BertConfig(**to_hf_bert_config(cfg), attn_implementation="sdpa")
        return {"ours": lambda: BertForMaskedLM(cfg), "hf": lambda: transformers.BertForMaskedLM(hf_cfg)}
    hf_cfg = transformers.GPT2Config(**to_hf_gpt2_config(cfg), attn_implementation="sdpa")
    return {"ours": lambda: GPTForCausalLM(cfg), "hf": lambda: transformers.GPT2LMHeadModel(hf_cfg)}


def make_batch(name: str, cfg: ModelConfig, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """One fixed batch: MLM with 15% masking (80/10/10) for BERT, next-token labels for GPT-2."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL), cfg.vocab_size, (batch, seq_len), generator=g)  # [B, T]
    if name == "gpt2":
        return {"input_ids": ids, "labels": ids.clone()}
    inputs, labels = mask_tokens(
        ids, mask_id=MASK_ID, vocab_size=cfg.vocab_size, special_ids=SPECIAL, probability=0.15, generator=g
    )
    return {"input_ids": inputs, "labels": labels}


def _loss(out: Any) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out.loss  # ours: dict; HF: ModelOutput


def time_steps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, steps: int, warmup: int
) -> float:
    """Tokens/s of ``steps`` training steps after ``warmup`` (compilation happens in the warm-up)."""
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01)
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = _loss(model(**batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch["input_ids"].numel() * steps / (time.perf_counter() - started)


def bench_models(args: argparse.Namespace, device: torch.device, peak: float | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.models:
        cfg = model_config(name, args.size, args.vocab)
        seq_len = args.seq_len or MODELS[name][2]
        batch_size = args.batch or (MODELS[name][3] if device.type == "cuda" else 4)
        batch = make_batch(name, cfg, batch_size, seq_len)
        builders = build_models(name, cfg)
        variants = [
            (impl, compiled) for compiled in ([False, True] if args.compile else [False]) for impl in builders
        ]
        samples: dict[str, list[float]] = {f"{i}_{'compile' if c else 'eager'}": [] for i, c in variants}
        n_params: dict[str, int] = {}
        for _ in range(args.repeat):
            for impl, compiled in variants:
                torch.manual_seed(0)
                model = builders[impl]().to(device).train()
                n_params[impl] = count_params(model)
                runnable = torch.compile(model) if compiled else model
                key = f"{impl}_{'compile' if compiled else 'eager'}"
                samples[key].append(time_steps(runnable, batch, device, args.steps, args.warmup))
                del model, runnable
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        fpt = flops_per_token(n_params["ours"], cfg.num_layers, cfg.hidden_size, seq_len)
        rows = {}
        for key, values in samples.items():
            tps = statistics.median(values)
            rows[key] = {"tokens_per_s": tps, "mfu": mfu(tps, fpt, 1, peak) if peak else None}
        ratios = {"ours_over_hf_eager": rows["ours_eager"]["tokens_per_s"] / rows["hf_eager"]["tokens_per_s"]}
        if args.compile:
            ratios["ours_over_hf_compile"] = (
                rows["ours_compile"]["tokens_per_s"] / rows["hf_compile"]["tokens_per_s"]
            )
        results[name] = {
            "seq_len": seq_len, "batch": batch_size, "params": n_params, "flops_per_token": fpt,
            "variants": rows, "ratios": ratios,
        }  # fmt: skip
    return results


def write_pack(root: Path, vocab: int, tokens: int) -> tuple[Path, Path]:
    """Synthetic packed tokens (the pack stage's format) and a tokenizer.json: step time does not
    depend on what the tokens say."""
    rng = np.random.default_rng(0)
    pack = root / "pack"
    pack.mkdir(parents=True)
    meta: dict[str, Any] = {"dtype": "uint32", "vocab_size": vocab, "sep_id": 3, "cls_id": 2, "splits": {}}
    for split, n in (("train", tokens), ("validation", max(tokens // 10, 4096))):
        ids = rng.integers(len(SPECIAL), vocab, size=n, dtype=np.uint32)
        ids.astype("<u4").tofile(pack / f"{split}.bin")
        np.save(pack / f"{split}.docs.npy", np.array([0], dtype=np.int64), allow_pickle=False)
        meta["splits"][split] = {"tokens": n, "docs": 1}
    (pack / "meta.json").write_text(json.dumps(meta))
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    special = {
        "pad_id": 0,
        "unk_id": 1,
        "cls_id": 2,
        "sep_id": 3,
        "mask_id": MASK_ID,
        "bos_id": 2,
        "eos_id": 3,
    }
    tok = {
        "vocab_size": vocab,
        "model_type": "unigram",
        "sentinel_ids": [],
        "special_ids": SPECIAL,
        **special,
    }
    (tokenizer / "tokenizer.json").write_text(json.dumps(tok))
    return pack, tokenizer


def bench_ray(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Ray Train with one worker against the bare Pretrainer loop, same config, same data."""
    import ray

    from plm_core.train.distributed import pretrain
    from plm_core.train.loop import Pretrainer

    name = args.ray_model
    cfg = model_config(name, args.size, args.vocab)
    seq_len = args.seq_len or MODELS[name][2]
    batch = args.batch or (MODELS[name][3] if device.type == "cuda" else 4)
    steps = args.ray_steps
    pcfg = PretrainConfig(
        objective="mlm" if name == "bert" else "clm", seq_len=seq_len, batch_size=batch, max_steps=steps,
        warmup_steps=1, num_workers=1, use_gpu=device.type == "cuda", checkpoint_every=0, eval_every=0,
        eval_batches=1, log_every=steps, threads_per_worker=torch.get_num_threads(),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        pack, tokenizer = write_pack(Path(tmp), cfg.vocab_size, (steps + 2) * batch * seq_len)
        config = {
            "pack_dir": str(pack), "tokenizer": json.loads((tokenizer / "tokenizer.json").read_text()),
            "tokenizer_dir": str(tokenizer), "model": asdict(cfg), "pretrain": asdict(pcfg),
        }  # fmt: skip

        def bare_loop() -> tuple[float, float]:
            """(tokens/s over the loop's own step timer, as the Ray worker measures it; wall s)."""
            bare = Pretrainer(config, device=device)
            started = time.perf_counter()
            for _ in range(steps):
                bare.train_step()
            wall, tps = time.perf_counter() - started, bare.state.tokens_seen / bare.state.seconds
            del bare
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return tps, wall

        before = bare_loop()
        started_ray = not ray.is_initialized()
        summary = pretrain(
            pack, tokenizer, cfg, pcfg, Path(tmp) / "out", storage_path=Path(tmp) / "ray", run_name="bench"
        )
        if started_ray:
            ray.shutdown()
        after = bare_loop()  # before and after the Ray run: load drifting over the run hits both
    bare_tps, bare_wall = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {
        "model": name, "steps": steps, "bare_tokens_per_s": bare_tps, "ray_tokens_per_s": summary["tokens_per_second"],
        "ray_over_bare": summary["tokens_per_second"] / bare_tps, "bare_loop_wall_s": bare_wall,
        "ray_fit_wall_s": summary["seconds"], "bare_tokens_per_s_before_after": [before[0], after[0]],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", default="base", help="model preset: tiny, mini, small, base")
    parser.add_argument(
        "--vocab", type=int, default=0, help="vocabulary (default: BERT's 30522, GPT-2's 50257)"
    )
    parser.add_argument("--seq-len", type=int, default=0, help="default: 128 for BERT, 1024 for GPT-2")
    parser.add_argument(
        "--batch", type=int, default=0, help="per device (default: 128 BERT / 16 GPT-2 on GPU)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ray-model", default="bert", choices=list(MODELS))
    parser.add_argument("--ray-steps", type=int, default=30)
    parser.add_argument("--peak-flops", type=float, default=0.0, help="bf16 peak per device, for MFU on CPU")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
            print(
                f"warning: OMP_NUM_THREADS is not {args.threads}; the CPU ray/bare ratio is skewed (see --help)"
            )

    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = device_peak_flops(args.peak_flops) if device.type == "cuda" or args.peak_flops else None
    result: dict[str, Any] = {"machine": machine(device), "device": device.type, "peak_flops": peak}
    result["models"] = bench_models(args, device, peak)
    if args.ray:
        result["ray"] = bench_ray(args, device)

    print(f"machine: {result['machine']}; peak bf16 {peak or 'n/a'} FLOP/s; median of {args.repeat}")
    print(f"{'model':6} {'variant':13} {'tokens/s':>12} {'MFU':>7}")
    for name, r in result["models"].items():
        for key, row in r["variants"].items():
            m = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
            print(
                f"{name:6} {key:13} {row['tokens_per_s']:12.0f} {m:>7}   (T={r['seq_len']}, B={r['batch']})"
            )
        for key, value in r["ratios"].items():
            print(f"ratio {name} {key} {value:.3f}")
    if args.ray:
        ray_r = result["ray"]
        print(
            f"ray {ray_r['model']}: bare loop {ray_r['bare_tokens_per_s']:.0f} tokens/s (before/after: "
            f"{ray_r['bare_tokens_per_s_before_after'][0]:.0f}/{ray_r['bare_tokens_per_s_before_after'][1]:.0f}), Ray 1 worker "
            f"{ray_r['ray_tokens_per_s']:.0f} tokens/s; fit() wall {ray_r['ray_fit_wall_s']:.1f} s for "
            f"{ray_r['steps']} steps (bare loop {ray_r['bare_loop_wall_s']:.1f} s)"
        )
        print(f"ratio ray_1w_over_bare {ray_r['ray_over_bare']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
