#!/usr/bin/env bash
# prequal's parameters in the discrete-event model: every scenario of conf/scenarios with
# `pool: { prequal: { probes: P, hot_quantile: Q } }` for each P × Q, 12 repetitions, beside
# least_connections, p2c_ewma and orca_least_delay. Writes OUT/pP-qQ.json: per scenario and
# strategy, the p99 of each repetition and the error rate (the model's full results run to
# ~200 MB per point and are not kept); scripts/bench_report.py turns them into the
# "prequal's parameters" table.
# Seconds of CPU: the model needs no processes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/bench/prequal-sweep}
bench=./target/release/nb-bench
[ -x "$bench" ] || cargo build --release --quiet -p nb-lab
for probes in 3 8 16; do
  for q in 0.5 0.7 0.84; do
    dir=$(mktemp -d)
    for f in conf/scenarios/*.yaml; do
      line="  prequal: { probes: $probes, hot_quantile: $q }"
      if grep -q '^pool:$' "$f"; then
        sed "s/^pool:\$/&\n$line/" "$f" >"$dir/$(basename "$f")"
      else
        { cat "$f"; printf 'pool:\n%s\n' "$line"; } >"$dir/$(basename "$f")"
      fi
    done
    $bench --scenario "$dir" --simulate --reps 12 --strategies prequal,least_connections,p2c_ewma,orca_least_delay \
      --out "$dir/out" >/dev/null 2>&1
    mkdir -p "$out"
    python3 - "$dir/out/results.json" "$out/p$probes-q$q.json" "$probes" "$q" <<'PY'
import json, sys
src, dst, probes, q = sys.argv[1:]
res = json.load(open(src))
summary = {"probes": int(probes), "hot_quantile": float(q), "scenarios": {}}
for sr in res["scenarios"]:
    per = summary["scenarios"].setdefault(sr["scenario"]["name"], {})
    for run in sr["runs"]:
        per.setdefault(run["strategy"], {"p99_ms": [], "errors": 0, "sent": 0})
    for run in sorted(sr["runs"], key=lambda r: r["rep"]):
        s = per[run["strategy"]]
        s["p99_ms"].append(run["report"]["latency_ms"]["p99"])
        s["errors"] += run["report"]["errors"]
        s["sent"] += run["report"]["sent"]
json.dump(summary, open(dst, "w"), indent=1)
PY
    rm -rf "$dir"
  done
done
echo "wrote $out"
