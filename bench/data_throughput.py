"""Throughput of the data stages on one corpus, beside raw-library references in the same run.

    .venv/bin/python bench/data_throughput.py                      # the shared Gutenberg corpus
    .venv/bin/python bench/data_throughput.py --corpus DIR --max-mb 1 --vocab-size 400

Steps, each in MB/s of the text it reads: ingest (raw files -> Parquet), clean (normalise,
filters, dedup, split), tokenizer training, and tokenize+pack with 1 and with N workers. The
references run on the same bytes in the same process: pyarrow reading the ingest Parquet, and
SentencePiece batch-encoding the same text chunks pack encodes, with 1 and with N threads. The
pack/SentencePiece pairs are measured back to back ``--repeat`` times so that load from other
processes hits both sides of a ratio alike; the ratios printed are medians over the repeats.
Peak RSS (this process, and the largest worker process) is taken once ingest -> clean ->
tokenizer -> pack have run, before the references, which hold the whole text in memory on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plm_core.config import CleanConfig, IngestConfig, PackConfig, TokenizerConfig  # noqa: E402
from plm_core.data.clean import clean  # noqa: E402
from plm_core.data.ingest import ingest, resolve_inputs  # noqa: E402
from plm_core.data.pack import pack, text_chunks  # noqa: E402
from plm_core.data.shards import shard_files  # noqa: E402
from plm_core.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

MB = 1e6
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "gutenberg"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _text_bytes(files: list[Path]) -> int:
    return sum(
        pc.sum(pc.binary_length(pq.read_table(p, columns=["text"])["text"])).as_py() or 0 for p in files
    )


def _pick_corpus(paths: list[str], max_mb: float, work: Path) -> list[str]:
    """The corpus files, or a copy of the first ones up to ``max_mb`` (sorted, so reproducible)."""
    files = resolve_inputs(paths)
    if not max_mb:
        return [str(f) for f in files]
    subset, total = work / "corpus", 0
    subset.mkdir()
    for f in files:
        if total >= max_mb * MB:
            break
        shutil.copy(f, subset / f.name)
        total += f.stat().st_size
    return [str(subset)]


def _sp_reference(tok: Tokenizer, chunks: list[str], threads: int) -> float:
    """Seconds for raw ``SentencePieceProcessor.encode`` over the chunks, in batches."""
    start = time.perf_counter()
    for i in range(0, len(chunks), 1024):
        tok.sp.encode(chunks[i : i + 1024], out_type=int, num_threads=threads)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-data-", dir=args.work_dir))
    try:
        with TreeRss() as tree:
            return _run(args, work, tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, tree: TreeRss) -> dict[str, Any]:
    corpus = _pick_corpus(args.corpus, args.max_mb, work)
    raw_bytes = sum(f.stat().st_size for f in resolve_inputs(corpus))
    dirs = {name: work / name for name in ("ingest", "clean", "tokenizer")}
    for d in dirs.values():
        d.mkdir()
    workers = max(args.workers)
    steps: dict[str, dict[str, float]] = {}

    seconds, _ = _timed(lambda: ingest(IngestConfig(paths=corpus), dirs["ingest"]))
    steps["ingest"] = {"mb": raw_bytes / MB, "seconds": seconds}
    ingest_text = _text_bytes(shard_files(dirs["ingest"]))
    clean_cfg = CleanConfig(num_workers=workers, validation_fraction=0.02)
    seconds, counts = _timed(lambda: clean(dirs["ingest"], clean_cfg, dirs["clean"]))
    steps["clean"] = {"mb": ingest_text / MB, "seconds": seconds}
    tok_cfg = TokenizerConfig(vocab_size=args.vocab_size, sample_sentences=args.sample_lines)
    seconds, tok_counts = _timed(lambda: train_tokenizer(dirs["clean"], tok_cfg, dirs["tokenizer"]))
    steps["tokenizer"] = {"mb": tok_counts["sample_chars"] / MB, "seconds": seconds}
    clean_files = shard_files(dirs["clean"] / "train") + shard_files(dirs["clean"] / "validation")
    clean_text = _text_bytes(clean_files)

    out = work / "pack"
    out.mkdir()
    seconds, _ = _timed(lambda: pack(dirs["clean"], dirs["tokenizer"], PackConfig(num_workers=workers), out))
    steps[f"pack_{workers}w"] = {"mb": clean_text / MB, "seconds": seconds}
    rss = _peak_rss(tree)  # the pipeline is done; the references below hold the whole text on purpose

    tok = Tokenizer.load(dirs["tokenizer"])
    docs = [t for p in clean_files for t in pq.read_table(p, columns=["text"])["text"].to_pylist()]
    chunks = [c for d in docs for c in text_chunks(d)]  # the units pack hands to SentencePiece
    del docs
    pack_runs: dict[int, list[float]] = {w: [] for w in args.workers}
    sp_runs: dict[int, list[float]] = {w: [] for w in args.workers}
    for _ in range(args.repeat):
        for w in args.workers:
            shutil.rmtree(out)
            out.mkdir()
            cfg = PackConfig(num_workers=w, backend="process")
            pack_runs[w].append(_timed(lambda cfg=cfg: pack(dirs["clean"], dirs["tokenizer"], cfg, out))[0])
            sp_runs[w].append(_sp_reference(tok, chunks, w))
    seconds_read, _ = _timed(
        lambda: [pq.read_table(p, columns=["text"]) for p in shard_files(dirs["ingest"])]
    )

    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": _cores(), "python": platform.python_version()},
        "corpus": {
            "files": corpus if args.max_mb else [str(p) for p in args.corpus],
            "raw_mb": round(raw_bytes / MB, 2),
        },
        "records": {"clean_in": counts["records_in"], "kept": counts["train"] + counts["validation"]},
        "steps": {k: {**v, "mb_per_s": v["mb"] / v["seconds"]} for k, v in steps.items()},
        "pack": {},
        "references": {"pyarrow_read_ingest_mb_per_s": ingest_text / MB / seconds_read},
        "peak_rss_mb": rss,
    }
    for w in args.workers:
        result["pack"][w] = {
            "mb_per_s": [clean_text / MB / s for s in pack_runs[w]],
            "sp_raw_mb_per_s": [clean_text / MB / s for s in sp_runs[w]],
        }
    one, most = min(args.workers), workers
    ratios = {
        f"pack_{one}w_over_sentencepiece_{one}thread": [
            sp / pk for pk, sp in zip(pack_runs[one], sp_runs[one], strict=True)
        ],
        f"pack_{most}w_over_pack_{one}w": [
            a / b for a, b in zip(pack_runs[one], pack_runs[most], strict=True)
        ],
        f"pack_{most}w_over_sentencepiece_{most}threads": [
            sp / pk for pk, sp in zip(pack_runs[most], sp_runs[most], strict=True)
        ],
        # What the machine allowed: if raw SentencePiece does not scale either, the cores were busy.
        f"sentencepiece_{most}threads_over_{one}thread": [
            a / b for a, b in zip(sp_runs[one], sp_runs[most], strict=True)
        ],
        "clean_over_pyarrow_read": [
            result["steps"]["clean"]["mb_per_s"] / result["references"]["pyarrow_read_ingest_mb_per_s"]
        ],
    }
    result["ratios"] = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in ratios.items()
    }
    return result


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _peak_rss(tree: TreeRss) -> dict[str, float]:
    """High-water marks so far: this process, the largest finished child (a pool worker) from
    ``getrusage``, and the largest sum over this process and its live children sampled by ``tree``
    (what the machine had to hold at once)."""
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "tree": tree.peak_mb,
    }


class TreeRss:
    """Samples the summed RSS of this process and all its descendants from /proc every
    ``interval`` seconds, in a daemon thread; ``peak_mb`` is the largest sum seen."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.sample_mb())

    @staticmethod
    def sample_mb() -> float:
        parent: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended while we looked
            parent[int(stat.parent.name)] = int(fields[1])
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            children = [c for c, p in parent.items() if p == pid]
            tree.update(children)
            frontier += children
        total_kb = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total_kb += next(
                (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
            )
        return total_kb / 1024


def report(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; corpus {result['corpus']['raw_mb']} MB"
    ]
    for name, step in result["steps"].items():
        lines.append(
            f"  {name:10s} {step['mb']:8.1f} MB in {step['seconds']:7.2f} s = {step['mb_per_s']:7.2f} MB/s"
        )
    for w, runs in result["pack"].items():
        pk = ", ".join(f"{x:.2f}" for x in runs["mb_per_s"])
        sp = ", ".join(f"{x:.2f}" for x in runs["sp_raw_mb_per_s"])
        lines.append(f"  pack {w} worker(s): {pk} MB/s; raw sentencepiece {w} thread(s): {sp} MB/s")
    lines.append(
        f"  pyarrow read of the ingest Parquet: {result['references']['pyarrow_read_ingest_mb_per_s']:.1f} MB/s"
    )
    rss = result["peak_rss_mb"]
    lines.append(
        f"  peak RSS: this process {rss['self']:.0f} MB, largest worker {rss['largest_child']:.0f} MB, "
        f"process tree at once {rss['tree']:.0f} MB"
    )
    for name, r in result["ratios"].items():
        lines.append(f"  ratio {name}: {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", default=[str(DEFAULT_CORPUS)], help="files, directories or globs")
    p.add_argument(
        "--max-mb", type=float, default=0.0, help="use only the first files up to this size (0 = all)"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pack worker counts to compare")
    p.add_argument(
        "--repeat", type=int, default=3, help="pack/SentencePiece measurement pairs per worker count"
    )
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--sample-lines", type=int, default=150_000)
    p.add_argument("--work-dir", default=None, help="where the temporary stage outputs go")
    p.add_argument("--json", default=None, help="also write the result here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
