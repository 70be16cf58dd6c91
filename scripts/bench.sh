#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md: every scenario through the real lab (our
# strategies and the nginx and HAProxy peers, 4 repetitions of the steady scenarios and 3 of
# the long phased ones, the order rotating between repetitions) and through the
# discrete-event model (5 repetitions). Takes about 65 minutes on 2
# cores; run it on an otherwise idle machine (nb-bench pins the proxy to one core and
# itself and the fleet to the other). Results land in docs/bench/; then
# scripts/bench_report.py writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --peers
cargo build --release --quiet -p neurabalancer -p backend-sim -p nb-lab
bench=./target/release/nb-bench
peers=round_robin,least_connections,p2c_ewma,prequal,orca_least_delay,nginx:least_conn,haproxy:leastconn
reps=${REPS:-4}
phased_reps=${PHASED_REPS:-3}
# Steady-state scenarios: 10 s measured after 3 s of warm-up.
$bench --scenario conf/scenarios/s0-homogeneous.yaml,conf/scenarios/s1-static-skew.yaml,conf/scenarios/s3-sinkhole.yaml,conf/scenarios/s4-mixed-classes.yaml,conf/scenarios/s6-shedding.yaml \
  --strategies "$peers" --reps "$reps" --duration 10 --warmup 3 --out docs/bench/steady
# prequal alone with 3 probes (power-of-d sampling, the reading of the paper before the
# defaults were measured) on the same scenarios, seeds and durations: the "prequal's
# parameters" table.
sampled=$(mktemp -d)
steady3=""
for f in s0-homogeneous s1-static-skew s3-sinkhole s4-mixed-classes s6-shedding; do
  sed 's/^load:.*/&\npool: { prequal: { probes: 3 } }/' "conf/scenarios/$f.yaml" >"$sampled/$f.yaml"
  steady3="$steady3${steady3:+,}$sampled/$f.yaml"
done
$bench --scenario "$steady3" --strategies prequal --reps "$reps" --duration 10 --warmup 3 --out docs/bench/prequal-sampled
rm -rf "$sampled"
# Phased scenarios keep enough time for their phases: s2's hot set moves every 10 s, s5's
# backends join at 10 s and stay slow for 60 s.
$bench --scenario conf/scenarios/s2-noisy-neighbour.yaml --strategies "$peers" --reps "$phased_reps" --duration 20 --warmup 5 --out docs/bench/s2
$bench --scenario conf/scenarios/s5-cold-join.yaml --strategies "$peers" --reps "$phased_reps" --duration 30 --warmup 5 --out docs/bench/s5
# The model: every scenario at full durations, every classic strategy, the ORCA
# ablations and both references, 5 repetitions.
$bench --scenario conf/scenarios --simulate --reps 5 \
  --strategies round_robin,weighted_round_robin,least_connections,random,p2c_ewma,prequal,prequal@no_orca,orca_least_delay,orca_least_delay@no_orca,greedy,clairvoyant \
  --out docs/bench/sim
# prequal's parameters in the model: probes × hot quantile on every scenario, 12 repetitions,
# against the classic strategies that can be the best (the "prequal's parameters" table).
./scripts/prequal_sweep.sh docs/bench/prequal-sweep
python3 scripts/bench_report.py
