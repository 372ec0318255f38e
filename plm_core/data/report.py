"""The data report of a run: what ingest, clean, tokenizer and pack did, read back from their stage
manifests and outputs under ``<runs>/stages/<stage>/<key>/``.

The stages of one run are found by following content digests: a pack manifest names the digests of
the clean and tokenizer outputs it read, the clean manifest the ingest digest, so the report never
mixes stages of different runs that happen to share a runs directory. It checks the accounting on
the way (records in = out + rejected for every step, and each step's input equals the previous
step's output) and draws the document-length histogram from the packed document offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plm_core.errors import InputError
from plm_core.stage import MANIFEST, read_manifest

DATA_STAGES = ("ingest", "clean", "tokenizer", "pack")
_UPSTREAM = {"pack": ("clean", "tokenizer"), "tokenizer": ("clean",), "clean": ("ingest",)}
HISTOGRAM = "doc_lengths.png"


@dataclass(frozen=True)
class DataReport:
    summary: dict[str, Any]
    markdown: str
    out_dir: Path


def _complete(runs_dir: Path, stage: str) -> list[Path]:
    """Finished directories of a stage, newest manifest first."""
    found = [p for p in (runs_dir / "stages" / stage).glob("*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: (p / MANIFEST).stat().st_mtime_ns, reverse=True)


def find_lineage(runs_dir: str | Path, start: str | Path | None = None) -> dict[str, Path]:
    """Stage name -> directory for the data stages of one run, walking digests upstream from
    ``start`` (a stage directory) or from the newest finished pack (else clean, else ingest)."""
    runs_dir = Path(runs_dir)
    if start is None:
        newest = next(
            (_complete(runs_dir, s)[:1] for s in reversed(DATA_STAGES) if _complete(runs_dir, s)), []
        )
        if not newest:
            raise InputError(
                runs_dir / "stages", "holds no finished data stage (ingest, clean, tokenizer, pack)"
            )
        start = newest[0]
    start = Path(start)
    if not (start / MANIFEST).is_file():
        raise InputError(start, "not a finished stage directory (no manifest.json)")
    lineage = {read_manifest(start)["stage"]: start}
    queue = [read_manifest(start)["stage"]]
    while queue:
        stage = queue.pop()
        inputs = read_manifest(lineage[stage])["inputs"]
        for upstream in _UPSTREAM.get(stage, ()):
            if upstream in lineage or upstream not in inputs:
                continue
            match = next(
                (p for p in _complete(runs_dir, upstream) if read_manifest(p)["digest"] == inputs[upstream]),
                None,
            )
            if match is None:
                raise InputError(
                    lineage[stage],
                    f"its {upstream} input (digest {inputs[upstream][:12]}) is not in {runs_dir}",
                )
            lineage[upstream] = match
            queue.append(upstream)
    return {s: lineage[s] for s in DATA_STAGES if s in lineage}


def _step_rows(counts: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per document-level step (records in, out, rejected by reason) and the accounting
    problems found, if any."""
    rows, problems = [], []
    if "ingest" in counts:
        c = counts["ingest"]
        rows.append(
            {"step": "ingest", "in": c["records_in"], "out": c["records_out"], "rejected": c["rejected"]}
        )
    if "clean" in counts:
        c = counts["clean"]
        rows.append(
            {
                "step": "clean",
                "in": c["records_in"],
                "out": c["train"] + c["validation"],
                "rejected": c["rejected"],
            }
        )
    if "pack" in counts:
        c = counts["pack"]
        docs = sum(c[s]["docs"] for s in ("train", "validation"))
        rows.append({"step": "pack", "in": docs, "out": docs, "rejected": {}})
    for row in rows:
        if row["in"] != row["out"] + sum(row["rejected"].values()):
            problems.append(
                f"{row['step']}: {row['in']} in != {row['out']} out + {sum(row['rejected'].values())} rejected"
            )
    for before, after in zip(rows, rows[1:], strict=False):
        if before["out"] != after["in"]:
            problems.append(
                f"{before['step']} wrote {before['out']} records but {after['step']} read {after['in']}"
            )
    return rows, problems


def _histogram(pack_dir: Path, out: Path) -> dict[str, Any]:
    """Document lengths in tokens (from ``{split}.docs.npy``) as a log-binned histogram PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = {
        split: np.diff(np.load(pack_dir / f"{split}.docs.npy", allow_pickle=False))
        for split in ("train", "validation")
        if (pack_dir / f"{split}.docs.npy").is_file()
    }
    every = np.concatenate(list(lengths.values())) if lengths else np.zeros(0, np.int64)
    fig, ax = plt.subplots(figsize=(7, 4))
    if every.size:
        bins = np.geomspace(max(every.min(), 1), max(every.max(), 2), 40)
        for split, values in lengths.items():
            ax.hist(values, bins=bins, alpha=0.7, label=f"{split} ({values.size} docs)")
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel("document length (tokens, incl. [SEP])")
    ax.set_ylabel("documents")
    ax.set_title("Document lengths after cleaning")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    if not every.size:
        return {}
    return {
        "docs": int(every.size),
        "min": int(every.min()),
        "median": float(np.median(every)),
        "mean": round(float(every.mean()), 1),
        "max": int(every.max()),
    }


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["# Data report", ""]
    lines += ["Stages: " + ", ".join(f"{s} `{p}`" for s, p in summary["stages"].items()), ""]
    lines += ["| step | records in | records out | rejected | by reason |", "|---|---:|---:|---:|---|"]
    for row in summary["steps"]:
        reasons = (
            ", ".join(f"{r} {n}" for r, n in sorted(row["rejected"].items(), key=lambda x: -x[1])) or "-"
        )
        lines.append(
            f"| {row['step']} | {row['in']} | {row['out']} | {sum(row['rejected'].values())} | {reasons} |"
        )
    lines.append("")
    lines.append(
        "Accounting: "
        + ("every record accounted for." if not summary["problems"] else "; ".join(summary["problems"]))
    )
    if "dedup" in summary:
        d = summary["dedup"]
        lines += [
            "",
            f"Dedup: {d['exact_duplicates']} exact + {d['near_duplicates']} near duplicates of {d['documents']} "
            f"documents (rate {d['rate']:.2%}), duplicate clusters: {d['clusters']}.",
        ]
    if "lines" in summary:
        ln = summary["lines"]
        removed = ", ".join(f"{r} {n}" for r, n in ln["removed"].items())
        lines.append(f"Lines: {ln['in']} in, {ln['out']} out, removed: {removed}.")
    if "tokenizer" in summary:
        k = summary["tokenizer"]
        lines.append(
            f"Tokenizer: {k['vocab_size']} pieces trained on {k['sample_lines']} sampled lines "
            f"of {k['lines_seen']} in the train split."
        )
    if "tokens" in summary:
        t = summary["tokens"]
        lines += [
            "",
            f"Tokens: train {t['train']}, validation {t['validation']} ({t['dtype']}, vocabulary {t['vocab_size']}); "
            f"{t['bytes_per_token']} bytes of text per token.",
        ]
    if summary.get("doc_lengths"):
        h = summary["doc_lengths"]
        lines.append(
            f"Document length (tokens): min {h['min']}, median {h['median']:g}, mean {h['mean']}, max {h['max']}; "
            f"histogram `{summary['histogram']}`."
        )
    return "\n".join(lines) + "\n"


def build_data_report(
    runs_dir: str | Path, out_dir: str | Path | None = None, start: str | Path | None = None
) -> DataReport:
    """Write ``report.md``, ``report.json`` and the histogram PNG; return them."""
    lineage = find_lineage(runs_dir, start)
    counts = {stage: read_manifest(path)["counts"] for stage, path in lineage.items()}
    steps, problems = _step_rows(counts)
    summary: dict[str, Any] = {
        "stages": {s: str(p) for s, p in lineage.items()},
        "steps": steps,
        "problems": problems,
    }
    if "clean" in counts:
        summary["dedup"] = counts["clean"].get("dedup", {})
        summary["lines"] = counts["clean"].get("lines", {})
        if not summary["dedup"]:
            summary.pop("dedup")
        if not summary["lines"]:
            summary.pop("lines")
    key = next(iter(reversed(lineage.values()))).name
    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "reports" / "data" / key
    out.mkdir(parents=True, exist_ok=True)
    if "pack" in counts:
        meta = json.loads((lineage["pack"] / "meta.json").read_text())
        pack = counts["pack"]
        tokens = pack["train"]["tokens"] + pack["validation"]["tokens"]
        summary["tokens"] = {
            "train": pack["train"]["tokens"],
            "validation": pack["validation"]["tokens"],
            "dtype": meta["dtype"],
            "vocab_size": meta["vocab_size"],
            "bytes_per_token": round(pack["bytes_in"] / tokens, 3) if tokens else None,
        }
        summary["histogram"] = str(out / HISTOGRAM)
        summary["doc_lengths"] = _histogram(lineage["pack"], out / HISTOGRAM)
    if "tokenizer" in counts:
        summary["tokenizer"] = counts["tokenizer"]
    markdown = _markdown(summary)
    (out / "report.md").write_text(markdown)
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DataReport(summary, markdown, out)
