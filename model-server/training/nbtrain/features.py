"""The model's input row and its targets, built from request records.

This is the Python side of the contract in docs/ml.md: the proxy, its request records and the
discrete-event model build rows with ``nb_strategy::ml::feature_row``; here the same row is
read back from a record's ``f_*`` columns, in the same order and units. One function per
direction (features, labels) so that training, evaluation and the tests cannot disagree.

Records are dicts with the columns of the JSONL request log / the ``training_requests`` view
(proxy/src/store/record.rs). Columns added later (``f_failure_rate``, ``f_latency_rif_ms``)
may be missing or null in old data; they read as 0, like every nullable feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

import numpy as np

# (name, unit) in row order: docs/ml.md, "Features".
FEATURES: tuple[tuple[str, str], ...] = (
    ("inflight", "count"),
    ("reported_queue", "count"),
    ("has_report", "bool"),
    ("latency_ewma_ms", "ms"),
    ("latency_rif_ms", "ms"),
    ("failure_rate", "ratio"),
    ("weight", "count"),
)
NAMES = tuple(n for n, _ in FEATURES)
INDEX = {n: i for i, n in enumerate(NAMES)}

# The record columns this module reads (what the database export selects).
COLUMNS = (
    "time", "pool", "backend", "status", "error", "upstream_latency_us",
    "f_inflight", "f_reported_queue", "f_latency_ewma_ms", "f_latency_rif_ms",
    "f_failure_rate", "f_weight",
)

# A configured weight when a record has none (the proxy always writes one with features).
DEFAULT_WEIGHT = 1.0


def _or0(v) -> float:
    return 0.0 if v is None else float(v)


def feature_row(rec: Mapping) -> list[float] | None:
    """The feature row of a record, or None when the record has no decision features (no
    backend was chosen: ``f_inflight`` is null)."""
    if rec.get("backend") is None or rec.get("f_inflight") is None:
        return None
    queue = rec.get("f_reported_queue")
    weight = rec.get("f_weight")
    return [
        float(rec["f_inflight"]),
        _or0(queue),
        0.0 if queue is None else 1.0,
        _or0(rec.get("f_latency_ewma_ms")),
        _or0(rec.get("f_latency_rif_ms")),
        _or0(rec.get("f_failure_rate")),
        DEFAULT_WEIGHT if weight is None else float(weight),
    ]


def is_success(rec: Mapping) -> bool:
    """An attempt succeeded when a response below 500 came back and the proxy saw no error
    (status 0 means no response was sent)."""
    status = int(rec.get("status") or 0)
    return status != 0 and status < 500 and rec.get("error") is None


def label(rec: Mapping) -> tuple[bool, float] | None:
    """``(failed, latency_ms)`` of a record; latency is NaN for a failure. None for a success
    without an upstream latency: nothing to learn from it."""
    if not is_success(rec):
        return True, float("nan")
    up = rec.get("upstream_latency_us")
    if up is None:
        return None
    return False, float(up) / 1000.0


def time_us(v) -> float:
    """A record's ``time`` (RFC 3339 text from JSONL, a datetime from PostgreSQL, or a
    number of µs) as µs since the Unix epoch."""
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if v.tzinfo is None:
        v = v.replace(tzinfo=timezone.utc)
    return v.timestamp() * 1e6


@dataclass
class Rows:
    """Training rows as arrays: ``x`` the features (float32, [n, 7]), ``failed`` the label,
    ``latency_ms`` the target of successes (NaN for failures), ``time_us`` and ``scenario``
    to split by."""

    x: np.ndarray
    failed: np.ndarray
    latency_ms: np.ndarray
    time_us: np.ndarray
    scenario: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.failed)

    def subset(self, idx) -> "Rows":
        return Rows(self.x[idx], self.failed[idx], self.latency_ms[idx], self.time_us[idx], self.scenario[idx])

    @property
    def success(self) -> np.ndarray:
        return ~self.failed

    def scenarios(self) -> list[str]:
        return sorted(set(self.scenario.tolist()))

    def column(self, name: str) -> np.ndarray:
        return self.x[:, INDEX[name]]


def build_rows(records: Iterable[tuple[str, Mapping]]) -> Rows:
    """Rows from ``(scenario, record)`` pairs; records without features or label are counted
    in ``dropped``."""
    xs, failed, lat, t, sc = [], [], [], [], []
    dropped = 0
    for scenario, rec in records:
        row = feature_row(rec)
        lab = label(rec) if row is not None else None
        if lab is None:
            dropped += 1
            continue
        xs.append(row)
        failed.append(lab[0])
        lat.append(lab[1])
        t.append(time_us(rec["time"]))
        sc.append(scenario)
    return Rows(
        x=np.asarray(xs, dtype=np.float32).reshape(-1, len(FEATURES)),
        failed=np.asarray(failed, dtype=bool),
        latency_ms=np.asarray(lat, dtype=np.float64),
        time_us=np.asarray(t, dtype=np.float64),
        scenario=np.asarray(sc, dtype=object),
        dropped=dropped,
    )

