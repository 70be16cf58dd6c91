#!/usr/bin/env bash
# Reproduces the learned strategy's figures in docs/benchmarks.md ("The learned strategy"):
# every scenario through the real lab with `ml` (and its model server, pinned with the proxy)
# and its ORCA ablation (`ml@no_orca`: every backend's load report off) beside the classic
# strategies, prequal, orca_least_delay, nginx and HAProxy, 3 repetitions (REPS), the order
# rotating between repetitions; then the discrete-event model with `ml`
# scoring the real model in-process, its ORCA ablation and both references, 5 repetitions.
# Takes about 65 minutes on 2 cores; run it on an otherwise idle machine. Results land in
# docs/bench/ml/; then scripts/bench_ml_report.py writes its section of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --peers
cargo build --release --quiet -p neurabalancer -p backend-sim -p nb-lab -p model-server
bench=./target/release/nb-bench
out=${OUT:-docs/bench/ml}
reps=${REPS:-3}
targets=${TARGETS:-ml,ml@no_orca,prequal,p2c_ewma,orca_least_delay,least_connections,round_robin,nginx:least_conn,haproxy:leastconn}
steady=conf/scenarios/s0-homogeneous.yaml,conf/scenarios/s1-static-skew.yaml,conf/scenarios/s3-sinkhole.yaml,conf/scenarios/s4-mixed-classes.yaml,conf/scenarios/s6-shedding.yaml
if [ -z "${SKIP_LAB:-}" ]; then
  # Steady-state scenarios: 10 s measured after 3 s of warm-up.
  $bench --scenario "$steady" --strategies "$targets" --baseline ml --reps "$reps" --duration 10 --warmup 3 --out "$out/steady"
  # Phased scenarios keep enough time for their phases (as scripts/bench.sh).
  $bench --scenario conf/scenarios/s2-noisy-neighbour.yaml --strategies "$targets" --baseline ml --reps "$reps" --duration 20 --warmup 5 --out "$out/s2"
  $bench --scenario conf/scenarios/s5-cold-join.yaml --strategies "$targets" --baseline ml --reps "$reps" --duration 30 --warmup 5 --out "$out/s5"
fi
# The model: every scenario at full durations, ml with the real model, its ORCA ablation,
# the classic strategies that can be best and both references.
$bench --scenario conf/scenarios --simulate --reps "${SIM_REPS:-5}" --baseline ml \
  --strategies ml,ml@no_orca,prequal,p2c_ewma,orca_least_delay,least_connections,round_robin,greedy,clairvoyant \
  --out "$out/sim"
python3 scripts/bench_ml_report.py "$out"
