#!/usr/bin/env bash
# Reproduces the request-recording figures in docs/benchmarks.md: the writer's rows/s into an
# on-disk PostgreSQL (default durability), proxy throughput under wrk with recording off / to
# PostgreSQL / to JSONL (side by side on one CPU, then one at a time on all CPUs), and p99 at
# a fixed rate with the database up and stopped. About 14 minutes on 2 cores; run it on an
# otherwise idle machine. Prints markdown tables; a full run writes them to
# docs/bench/store.md and refreshes docs/benchmarks.md. Extra arguments go to the bench:
# --only throughput,latency,writer  --reps N (latency, writer)  --slices N  --wrk-seconds S
# (throughput)  --variants postgres,jsonl  --rate R (latency).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if ! command -v wrk >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo bench -p neurabalancer --bench store -- --reps 5 "$@"
python3 scripts/bench_report.py
