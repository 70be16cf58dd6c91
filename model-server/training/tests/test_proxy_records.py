"""Records written by the real proxy read back as the rows the contract describes.

The other tests build records by hand (``synth``); this one runs the ``neurabalancer`` binary
that ``cargo test --release`` (run before pytest by scripts/test.sh) leaves in
``target/release``, in front of a backend on 127.0.0.1 that sends an ORCA load report and
fails one path, with the JSONL request log on. The rows ``nbtrain`` builds from that file must
carry every feature in order and units (docs/ml.md): a drift between the proxy's record
encoder and the training side fails here, not in a model trained on zeros.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, free_port, serve
from nbtrain import features, records

SERVICE_S = 0.005
QUEUE = 3
WEIGHT = 3
REQUESTS = 40
FAIL_EVERY = 10


def proxy_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "release" / "neurabalancer"
    assert path.is_file(), f"no {path}: build it first (cargo build --release -p neurabalancer)"
    return path


@pytest.fixture
def backend():
    """A backend that takes SERVICE_S per request, reports QUEUE waiting (ORCA, TEXT) and
    answers 503 on /fail."""

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            time.sleep(SERVICE_S)
            body = b"ok"
            self.send_response(503 if self.path == "/fail" else 200)
            self.send_header("content-length", str(len(body)))
            self.send_header("endpoint-load-metrics", f"TEXT cpu_utilization=0.5, named_metrics.queue={QUEUE}")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with serve(H) as port:
        yield port


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the proxy exited: {log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the proxy is not listening on {port}: {log.read_text()}")


def test_records_of_the_real_proxy_build_the_contracts_rows(backend, tmp_path):
    listen, admin = free_port(), free_port()
    record = tmp_path / "proxyrun.p2c.s1.jsonl"
    (tmp_path / "upstreams.yaml").write_text(
        "pools:\n"
        "  p:\n"
        "    strategy: p2c_ewma\n"
        "    outlier_detection: { consecutive_5xx: 0, consecutive_gateway_failures: 0 }\n"
        f"    servers:\n      - {{ id: a, address: 127.0.0.1:{backend}, weight: {WEIGHT} }}\n"
        "routes:\n  - { pool: p }\n"
    )
    main = tmp_path / "neurabalancer.yaml"
    main.write_text(
        f"listen: 127.0.0.1:{listen}\n"
        "upstreams_file: upstreams.yaml\n"
        f"admin: {{ listen: 127.0.0.1:{admin} }}\n"
        "threads: 1\n"
        f"storage: {{ request_log_file: {str(record)!r}, flush_interval_ms: 50 }}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("NEURABALANCER_")}
    env["RUST_LOG"] = "warn"
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([proxy_binary(), "run", "--config", main], stdout=out, stderr=out, env=env)
    try:
        wait_listening(listen, proc, log)
        statuses = []
        for i in range(REQUESTS):
            path = "/fail" if i % FAIL_EVERY == FAIL_EVERY - 1 else f"/ok/{i}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{listen}{path}", timeout=5) as r:
                    statuses.append(r.status)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
        assert statuses.count(503) == REQUESTS // FAIL_EVERY, statuses
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if record.exists() and len(record.read_text().splitlines()) >= REQUESTS:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    rows = records.rows_from_jsonl([record])
    assert (len(rows), rows.dropped) == (REQUESTS, 0), log.read_text()
    assert rows.scenarios() == ["proxyrun"]
    assert rows.x.shape == (REQUESTS, len(features.FEATURES))
    order = np.argsort(rows.time_us, kind="stable")
    x, failed, latency = rows.x[order], rows.failed[order], rows.latency_ms[order]
    col = {n: x[:, i] for i, n in enumerate(features.NAMES)}

    # One request at a time: none other in flight when each was decided.
    assert np.all(col["inflight"] == 0)
    assert np.all(col["weight"] == WEIGHT)
    # No report before the first answer; the backend's queue after it.
    assert (col["has_report"][0], col["reported_queue"][0]) == (0, 0)
    assert np.all(col["has_report"][1:] == 1)
    assert np.all(col["reported_queue"][1:] == QUEUE)
    # Milliseconds, not µs or s: the backend takes SERVICE_S, the loopback adds little.
    assert col["latency_ewma_ms"][0] == 0
    assert np.all((col["latency_ewma_ms"][1:] >= SERVICE_S * 1e3 * 0.8) & (col["latency_ewma_ms"][1:] < 1000))
    assert np.all((col["latency_rif_ms"][1:] > 0) & (col["latency_rif_ms"][1:] < 60_000))
    # The labels: every tenth request failed, the others took at least the service time.
    assert failed.sum() == REQUESTS // FAIL_EVERY
    assert np.all(failed[FAIL_EVERY - 1 :: FAIL_EVERY])
    assert np.all(np.isnan(latency[failed]))
    assert np.all((latency[~failed] >= SERVICE_S * 1e3) & (latency[~failed] < 1000))
    # A ratio: 0 until the first failure, then above 0 and at most 1.
    fr = col["failure_rate"]
    assert np.all(fr[:FAIL_EVERY] == 0)
    assert np.all((fr[FAIL_EVERY:] > 0) & (fr[FAIL_EVERY:] <= 1))
