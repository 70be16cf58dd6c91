#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md: every scenario through the real lab (our
# strategies and the nginx and HAProxy peers, 3 interleaved repetitions) and through the
# discrete-event model. Takes about 35 minutes on 2 cores; run it on an otherwise idle
# machine. Results land in docs/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx haproxy >/dev/null
fi
cargo build --release --quiet -p neurabalancer -p backend-sim -p nb-lab
bench=./target/release/nb-bench
peers=round_robin,least_connections,p2c_ewma,nginx:least_conn,haproxy:leastconn
# Steady-state scenarios: 10 s measured after 3 s of warm-up is enough for stable p99s at ~1000 req/s.
$bench --scenario conf/scenarios/s0-homogeneous.yaml,conf/scenarios/s1-static-skew.yaml,conf/scenarios/s3-sinkhole.yaml,conf/scenarios/s4-mixed-classes.yaml \
  --strategies "$peers" --reps 3 --duration 10 --warmup 3 --out docs/bench/steady
# Phased scenarios keep enough time for their phases: s2's hot set moves every 10 s, s5's
# backends join at 10 s and stay slow for 60 s.
$bench --scenario conf/scenarios/s2-noisy-neighbour.yaml --strategies "$peers" --reps 3 --duration 20 --warmup 5 --out docs/bench/s2
$bench --scenario conf/scenarios/s5-cold-join.yaml --strategies "$peers" --reps 3 --duration 30 --warmup 5 --out docs/bench/s5
# The model: all six scenarios, every classic strategy and the oracle, full durations.
$bench --scenario conf/scenarios --simulate --out docs/bench/sim
