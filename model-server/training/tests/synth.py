"""Synthetic request records for the tests: small, seeded, and shaped like the real thing.

Each scenario is a fleet of backends with a base service time; an attempt's latency is
``base × (inflight + 1)`` with multiplicative noise, one backend per scenario fails a share
of its attempts with a fast 503, and the recorded features (peak-EWMA, latency at this level
of requests in flight, recent failure rate, ORCA queue when reported) are noisy views of the
same truth. The dicts have every column of the JSONL request log.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

START = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def records(scenario: str = "s0", n: int = 600, seed: int = 0, bases=(5.0, 10.0, 20.0), fail_rate: float = 0.3,
            new_columns: bool = True, start: datetime = START, pool: str = "api") -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = int(rng.integers(len(bases)))
        base = bases[b]
        inflight = int(rng.integers(0, 9))
        failing = b == len(bases) - 1
        failed = failing and rng.random() < fail_rate
        latency = base * (inflight + 1) * rng.lognormal(0.0, 0.1)
        reported = rng.random() < 0.7
        rec = {
            "time": (start + timedelta(milliseconds=10 * i)).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "request_id": f"{scenario}-{i}",
            "trace_id": None,
            "pool": pool,
            "route": "/",
            "backend": f"b{b}",
            "backend_address": f"127.0.0.1:{9000 + b}",
            "method": "GET",
            "status": 503 if failed else 200,
            "error": None,
            "latency_us": int((0.1 if failed else latency) * 1000) + 50,
            "upstream_latency_us": int((0.1 if failed else latency) * 1000),
            "request_bytes": 0,
            "response_bytes": 0 if failed else 100,
            "retries": 0,
            "strategy": "random",
            "f_inflight": float(inflight),
            "f_latency_ewma_ms": float(base * 4 * rng.lognormal(0, 0.3)) if i > 3 else None,
            "f_error_rate": 0.0,
            "f_weight": 1.0,
            "f_since_success_ms": 1.0,
            "f_reported_cpu": 0.5 if reported else None,
            "f_reported_queue": float(max(inflight - 4, 0)) if reported else None,
            "f_reported_rps": 100.0 if reported else None,
            "predicted_latency_us": None,
            "client_addr": "127.0.0.1",
        }
        if new_columns:
            rec["f_latency_rif_ms"] = float(base * (inflight + 1) * rng.lognormal(0, 0.2))
            rec["f_failure_rate"] = float(np.clip(fail_rate * failing + rng.normal(0, 0.05), 0, 1))
            rec["ml_decided"] = False
        out.append(rec)
    return out


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def fleet(directory: Path, scenarios=("s0-homogeneous", "s1-skew", "s3-sinkhole"), n: int = 600) -> list[Path]:
    """One JSONL file per scenario (named as nb-bench --record names them), different fleets."""
    files = []
    for k, s in enumerate(scenarios):
        bases = tuple(5.0 * (1 + k * j) for j in (1, 2, 3))
        files.append(write_jsonl(directory / f"{s}.random.s1000.jsonl",
                                 records(s, n, seed=k, bases=bases, start=START + timedelta(hours=k))))
    return files
