"""bench/pretrain_throughput.py runs end to end on CPU with tiny sizes, so it cannot rot unnoticed:
ours and HF's BERT and GPT-2 on the same batch, and one Ray Train worker against the bare loop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "pretrain_throughput.py"


@pytest.fixture(autouse=True)
def restore_threads():
    """The bench sets torch's thread count (--threads 1); later tests keep their own."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _bench():
    spec = importlib.util.spec_from_file_location("pretrain_throughput", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.integration  # ~40-60 s, most of it starting Ray for the one-worker run
def test_bench_runs_on_cpu_with_tiny_sizes(tmp_path: Path, capsys) -> None:
    import ray

    result = _bench().main(
        [
            "--device", "cpu", "--size", "tiny", "--vocab", "512", "--seq-len", "64", "--batch", "2",
            "--steps", "2", "--warmup", "1", "--repeat", "1", "--no-compile", "--ray-steps", "3", "--threads", "1",
            "--json", str(tmp_path / "r.json"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert not ray.is_initialized()  # the bench stops the Ray it started
    assert set(result["models"]) == {"bert", "gpt2"}
    for name, r in result["models"].items():
        assert set(r["variants"]) == {"ours_eager", "hf_eager"}
        assert all(v["tokens_per_s"] > 0 and v["mfu"] is None for v in r["variants"].values())  # no CPU peak
        assert r["ratios"]["ours_over_hf_eager"] == pytest.approx(
            r["variants"]["ours_eager"]["tokens_per_s"] / r["variants"]["hf_eager"]["tokens_per_s"]
        )
        assert f"ratio {name} ours_over_hf_eager" in printed
    # the same sizes on both sides: HF's parameter count matches ours (BERT: ours has no pooler/NSP)
    assert result["models"]["gpt2"]["params"]["ours"] == result["models"]["gpt2"]["params"]["hf"]
    assert result["ray"]["ray_tokens_per_s"] > 0 and result["ray"]["bare_tokens_per_s"] > 0
    assert "ratio ray_1w_over_bare" in printed
    assert json.loads((tmp_path / "r.json").read_text())["ray"]["steps"] == 3


def test_mfu_is_reported_when_a_peak_is_given(capsys) -> None:
    result = _bench().main(
        [
            "--device", "cpu", "--models", "gpt2", "--size", "tiny", "--vocab", "256", "--seq-len", "32",
            "--batch", "2", "--steps", "1", "--warmup", "0", "--repeat", "1", "--no-compile", "--no-ray",
            "--peak-flops", "1e12", "--threads", "1",
        ]
    )  # fmt: skip
    row = result["models"]["gpt2"]["variants"]["ours_eager"]
    fpt = result["models"]["gpt2"]["flops_per_token"]
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * fpt / 1e12)
    assert "ray" not in result and "%" in capsys.readouterr().out
