"""The classifier served by ``mlflow models serve`` under load: 200 requests on loopback with at most
8 in flight, none fails, every answer is a valid prediction; p50 and p99 latency are reported
(printed, recorded as test properties, and written to ``serving_latency.json`` beside the server's
logs, or to ``$PLM_SERVING_REPORT`` when set)."""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.mlflow_stack import invoke

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REQUESTS, CONCURRENCY = 200, 8
WORDS = ["good", "bad", "film", "plot", "boring", "moving", "acting", "the", "was", "a", "too", "long"]


def test_200_requests_with_bounded_concurrency_none_fails(
    served_classifier: dict[str, Any], record_property, capsys
) -> None:
    url = served_classifier["url"]
    rng = random.Random(0)
    bodies = [
        [{"text": " ".join(rng.choices(WORDS, k=rng.randint(3, 20)))} for _ in range(rng.randint(1, 4))]
        for _ in range(REQUESTS)
    ]
    invoke(url, bodies[0])  # warm-up: first call loads lazily initialised pieces

    def one(records: list[dict[str, str]]) -> tuple[float, list[dict[str, Any]]]:
        started = time.perf_counter()
        rows = invoke(url, records, timeout=60)["predictions"]
        return time.perf_counter() - started, rows

    wall = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, bodies))  # any failed request raises here
    wall = time.perf_counter() - wall

    for (_, rows), records in zip(results, bodies, strict=True):
        assert len(rows) == len(records)
        for row in rows:
            assert row["label"] in ("negative", "positive")
            assert 0.5 <= row["probability"] <= 1.0
    latencies = np.array([t for t, _ in results]) * 1000
    report = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "failed": 0,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(float(latencies.max()), 1),
        "throughput_rps": round(REQUESTS / wall, 1),
    }
    for key, value in report.items():
        record_property(key, value)
    path = Path(os.environ.get("PLM_SERVING_REPORT") or served_classifier["root"] / "serving_latency.json")
    path.write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nserving load ({url}/invocations): {json.dumps(report)} -> {path}")
