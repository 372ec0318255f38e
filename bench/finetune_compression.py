"""Fine-tuning compression on SST-2: full vs LoRA vs IA3 adapters, distillation, int8 quantization.

Everything is measured in one command so the ratios compare like with like on a shared machine:

1. ``full``: fine-tune every parameter of a pretrained encoder (the reference accuracy).
2. ``lora`` / ``adapter``: the same start, only LoRA (or IA3) and the head trainable; reports the
   trainable fraction and the dev accuracy gap to ``full``.
3. ``distill``: a student with fewer layers (and/or a smaller hidden size) trained from ``full``'s
   logits; reports student and teacher accuracy and parameter counts.
4. ``quant``: the ``full`` classifier served fp32 and int8 (dynamic quantization of every Linear)
   on SST-2 dev: accuracy of both, and prediction time of both, interleaved repeats, median.
   The tiny model is mostly embedding lookups (which int8 does not touch), so the speed figure is
   also taken on the ``--speed-presets`` bodies (same code path, random weights: speed does not
   depend on the weight values), and the report says which figure is which.

Example (CPU, tiny pretrained model from ``plm run --preset tiny``)::

    .venv/bin/python bench/finetune_compression.py --pretrained runs/stages/pretrain/<key> \\
        --tokenizer runs/stages/tokenizer/<key> --out /tmp/cls_bench --max-train-examples 20000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from plm_core.config import FinetuneConfig, model_preset
from plm_core.finetune.classification import finetune_classification
from plm_core.finetune.model_init import TOKENIZER_FILES
from plm_core.finetune.peft import count_parameters
from plm_core.finetune.quantize import serialized_linear_bytes
from plm_core.finetune.task_data import load_classification
from plm_core.models.factory import classification_model
from plm_core.models.io import load_config, save_model
from plm_core.serving.classifier import ClassifierPredictor

PARTS = ("full", "lora", "adapter", "distill", "quant")


def _finetune(name: str, args: argparse.Namespace, pretrained: Path | None, **overrides: object) -> dict:
    out = args.out / name
    if args.reuse and (out / "metrics.json").is_file():
        print(f"[{name}] reusing {out}", flush=True)
        return json.loads((out / "metrics.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    cfg = FinetuneConfig(
        train_path=str(args.train),
        dev_path=str(args.dev),
        max_len=64,
        batch_size=32,
        epochs=args.epochs,
        max_train_examples=args.max_train_examples,
        threads=args.threads,
        seed=args.seed,
        patience=args.patience,
    )
    cfg = replace(cfg, **overrides)
    print(f"[{name}] fine-tuning: {overrides}", flush=True)
    body_cfg, _ = load_config(args.pretrained)
    result = finetune_classification(args.tokenizer, pretrained, body_cfg, cfg, out)
    print(f"[{name}] {json.dumps({k: v for k, v in result.items() if not isinstance(v, list)})}", flush=True)
    return json.loads((out / "metrics.json").read_text())


def _time_predict(predictor: ClassifierPredictor, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). With one torch thread the CPU time is what the
    work costs; on a loaded machine wall time also counts waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    predictor.predict_proba(texts, batch_size=batch_size)
    return time.perf_counter() - wall, time.process_time() - cpu


def _speed(model_dir: Path, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds to label ``texts`` with the fp32 and the int8 predictor, interleaved."""
    fp32, int8 = ClassifierPredictor(model_dir), ClassifierPredictor(model_dir, quantize=True)
    for p in (fp32, int8):  # warm-up: first calls allocate and pick kernels
        _time_predict(p, texts[:128], args.batch_size)
    times: dict[str, list[tuple[float, float]]] = {"fp32": [], "int8": []}
    for _ in range(args.repeats):
        times["fp32"].append(_time_predict(fp32, texts, args.batch_size))
        times["int8"].append(_time_predict(int8, texts, args.batch_size))
    wall = {k: [w for w, _ in v] for k, v in times.items()}
    cpu = {k: [c for _, c in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "fp32_seconds": med["fp32"],
        "int8_seconds": med["int8"],
        "speedup": med["fp32"] / med["int8"],
        # Each fp32 run against the int8 run right after it: load drifts cancel within a pair.
        "speedup_pairwise_median": statistics.median(
            a / b for a, b in zip(wall["fp32"], wall["int8"], strict=True)
        ),
        "fp32_cpu_seconds": cpu_med["fp32"],
        "int8_cpu_seconds": cpu_med["int8"],
        "cpu_speedup": cpu_med["fp32"] / cpu_med["int8"],
        "fp32_runs": wall["fp32"],
        "int8_runs": wall["int8"],
        "fp32_weight_bytes": serialized_linear_bytes(fp32.model),
        "int8_weight_bytes": serialized_linear_bytes(int8.model),
        "parameters": count_parameters(fp32.model).total,
    }


def _preset_model_dir(preset: str, tokenizer: Path, root: Path, labels: list[str]) -> Path:
    """A classifier directory of a preset's encoder body with random weights (for speed only)."""
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["vocab_size"]
    cfg = model_preset(preset, "encoder", vocab_size=vocab)
    torch.manual_seed(0)
    model = classification_model(cfg, len(labels))
    out = root / preset
    save_model(model, cfg, out, extra={"task": "classification", "labels": labels, "max_len": 64})
    (out / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer / name, out / "tokenizer" / name)
    return out


def _quant(args: argparse.Namespace) -> dict:
    full_dir = args.quant_model or args.out / "full"
    dev = load_classification(args.dev)
    fp32, int8 = ClassifierPredictor(full_dir), ClassifierPredictor(full_dir, quantize=True)
    p32 = fp32.predict_proba(dev.texts).argmax(-1)
    p8 = int8.predict_proba(dev.texts).argmax(-1)
    labels = torch.tensor(dev.label_ids).numpy()
    report: dict = {
        "model": str(full_dir),
        "accuracy_fp32": float((p32 == labels).mean()),
        "accuracy_int8": float((p8 == labels).mean()),
        "agreement": float((p32 == p8).mean()),
        "speed": {"finetuned_tiny": _speed(full_dir, dev.texts, args)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.speed_presets:
            model_dir = _preset_model_dir(preset, args.tokenizer, Path(tmp), fp32.labels)
            report["speed"][preset] = _speed(model_dir, dev.texts, args)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", type=Path, required=True, help="pretrain stage directory")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer stage directory")
    parser.add_argument("--train", type=Path, default=Path("../shared/data/glue_sst2/train.jsonl"))
    parser.add_argument("--dev", type=Path, default=Path("../shared/data/glue_sst2/dev.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/finetune_compression"))
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--max-train-examples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument(
        "--full-name", default="full", help="output name of the full run (the teacher is 'full')"
    )
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--lora-r", type=int, default=4)
    parser.add_argument(
        "--lora-name", default="lora", help="output name of the LoRA run (to compare settings)"
    )
    parser.add_argument(
        "--no-lora-embeddings",
        dest="lora_embeddings",
        action="store_false",
        help="LoRA on Linear layers only",
    )
    parser.add_argument("--adapter-lr", type=float, default=1e-2)
    parser.add_argument("--distill-lr", type=float, default=1e-3)
    parser.add_argument(
        "--teacher", type=Path, default=None, help="teacher classifier dir (default: OUT/full)"
    )
    parser.add_argument(
        "--quant-model", type=Path, default=None, help="classifier to quantize (default: OUT/full)"
    )
    parser.add_argument("--student-layers", type=int, default=1)
    parser.add_argument("--student-hidden", type=int, default=0)
    parser.add_argument("--distill-alpha", type=float, default=0.5)
    parser.add_argument("--distill-temperature", type=float, default=2.0)
    parser.add_argument("--speed-presets", nargs="*", default=["mini", "small"])
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="reuse finished fine-tuning outputs in --out")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["args"] = {k: str(v) for k, v in vars(args).items()}

    def keep(name: str, metrics: dict) -> None:
        summary[name] = {k: v for k, v in metrics.items() if k not in ("history", "labels")}
        summary_path.write_text(json.dumps(summary, indent=2))

    if "full" in parts:
        keep(args.full_name, _finetune(args.full_name, args, args.pretrained, lr=args.full_lr))
    if "lora" in parts:
        keep(
            args.lora_name,
            _finetune(
                args.lora_name,
                args,
                args.pretrained,
                method="lora",
                lr=args.lora_lr,
                lora_r=args.lora_r,
                lora_embeddings=args.lora_embeddings,
            ),
        )
    if "adapter" in parts:
        keep("adapter", _finetune("adapter", args, args.pretrained, method="adapter", lr=args.adapter_lr))
    if "distill" in parts:
        overrides = dict(
            distill_teacher=str(args.teacher or args.out / "full"),
            student_layers=args.student_layers,
            student_hidden=args.student_hidden,
            distill_alpha=args.distill_alpha,
            distill_temperature=args.distill_temperature,
            lr=args.distill_lr,
        )
        name = f"distill_L{args.student_layers}_H{args.student_hidden}_a{args.distill_alpha:g}"
        keep(name, _finetune(name, args, None, **overrides))
    if "quant" in parts:
        print("[quant] fp32 vs int8 on SST-2 dev", flush=True)
        keep("quant", _quant(args))

    full = summary.get("full", {})
    print("\n== summary ==")
    for name, s in summary.items():
        if "trainable_fraction" in s and not name.startswith("distill_"):
            gap = 100 * (s["dev_accuracy"] - full.get("dev_accuracy", float("nan")))
            print(
                f"{name:8s} dev acc {100 * s['dev_accuracy']:.2f}%  trainable {s['trainable_parameters']:,} / "
                f"{s['total_parameters']:,} ({100 * s['trainable_fraction']:.2f}%)  vs full {gap:+.2f} pts  "
                f"{s['seconds']:.0f}s"
            )
    for name, s in summary.items():
        if name.startswith("distill_"):
            print(
                f"{name}: student dev acc {100 * s['dev_accuracy']:.2f}% ({s['student_parameters']:,} params) "
                f"vs teacher {100 * s['teacher_dev_accuracy']:.2f}% ({s['teacher_parameters']:,} params)"
            )
    if "quant" in summary:
        q = summary["quant"]
        print(
            f"int8 dev acc {100 * q['accuracy_int8']:.2f}% vs fp32 {100 * q['accuracy_fp32']:.2f}% "
            f"(agreement {100 * q['agreement']:.1f}%)"
        )
        for name, s in q["speed"].items():
            print(
                f"speed {name:15s} params {s['parameters']:,}: fp32 {s['fp32_seconds']:.3f}s int8 "
                f"{s['int8_seconds']:.3f}s -> int8 is {s['speedup']:.2f}x faster (pairwise median "
                f"{s['speedup_pairwise_median']:.2f}x; CPU time {s['fp32_cpu_seconds']:.2f}s vs "
                f"{s['int8_cpu_seconds']:.2f}s = {s['cpu_speedup']:.2f}x); weights "
                f"{s['fp32_weight_bytes'] / 1e6:.1f} MB -> {s['int8_weight_bytes'] / 1e6:.1f} MB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
