"""bench/data_throughput.py runs end to end on a small corpus, so it cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data_throughput.py"


def test_bench_runs_on_a_small_corpus(tmp_path: Path, data_text: Callable[..., str], capsys) -> None:
    spec = importlib.util.spec_from_file_location("data_throughput", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"doc{i:02d}.txt").write_text(data_text(i, paragraphs=10))
    result = bench.main(
        [
            "--corpus", str(corpus), "--vocab-size", "600", "--sample-lines", "2000",
            "--workers", "1", "2", "--repeat", "1", "--work-dir", str(tmp_path), "--json", str(tmp_path / "r.json"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert set(result["steps"]) == {"ingest", "clean", "tokenizer", "pack_2w"}
    assert all(step["mb_per_s"] > 0 for step in result["steps"].values())
    assert set(result["ratios"]) == {
        "pack_1w_over_sentencepiece_1thread",
        "pack_2w_over_pack_1w",
        "pack_2w_over_sentencepiece_2threads",
        "sentencepiece_2threads_over_1thread",
        "clean_over_pyarrow_read",
    }
    assert result["peak_rss_mb"]["self"] > 0 and result["peak_rss_mb"]["tree"] > 0
    assert "ratio pack_1w_over_sentencepiece_1thread" in printed
    assert (tmp_path / "r.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bench-data-")] == []  # cleaned up
