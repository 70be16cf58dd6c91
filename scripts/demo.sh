#!/usr/bin/env bash
# The demo: three simulated backends of different speeds (2, 5 and 20 ms), the proxy in
# front of them, and open-loop traffic through it under each classic strategy in turn,
# switched by hot reload. Prints what each strategy did with the traffic.
# Needs no database. Uses ports 8080 (proxy), 8090 (admin) and 8001-8003 (backends).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

./scripts/setup.sh
echo "demo: building (release)..." >&2
cargo build --release --quiet -p neurabalancer -p backend-sim

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cp conf/neurabalancer.yaml conf/upstreams.yaml "$work/"
sed -i 's/log_format: json/log_format: text/' "$work/neurabalancer.yaml"

"$root/target/release/backend-sim" --fleet conf/sim/demo.yaml 2>"$work/sim.log" &
pids+=($!)
"$root/target/release/neurabalancer" run --config "$work/neurabalancer.yaml" 2>"$work/proxy.log" &
pids+=($!)

for _ in $(seq 100); do
  if curl -fs http://127.0.0.1:8090/health/ready >/dev/null 2>&1; then break; fi
  sleep 0.1
done
if ! curl -fs http://127.0.0.1:8090/health/ready >/dev/null; then
  echo "demo: the proxy did not become ready; its log:" >&2
  cat "$work/proxy.log" >&2
  exit 1
fi

rate=${DEMO_RATE:-400}
duration=${DEMO_DURATION:-6}
echo
echo "NeuraBalancer demo: $rate requests/s for ${duration}s per strategy through http://127.0.0.1:8080/"
echo "backends: backend-1 answers in 2 ms, backend-2 in 5 ms, backend-3 in 20 ms"
echo
for strategy in round_robin weighted_round_robin least_connections p2c_ewma; do
  sed -i -E "s/strategy: [a-z0-9_]+/strategy: $strategy/" "$work/upstreams.yaml"
  code=$(curl -s -o "$work/reload.json" -w '%{http_code}' -X POST http://127.0.0.1:8090/api/v1/reload)
  if [ "$code" != 200 ]; then echo "demo: reload failed:" >&2; cat "$work/reload.json" >&2; exit 1; fi
  "$root/target/release/nb-bench" --url http://127.0.0.1:8080/ --rate "$rate" --duration "$duration" \
    --warmup 1 --deadline-ms 1000 --label "$strategy" --json "$work/$strategy.json" >"$work/$strategy.txt"
done

python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
names = ["round_robin", "weighted_round_robin", "least_connections", "p2c_ewma"]
rows = [json.load(open(os.path.join(work, n + ".json"))) for n in names]
print(f"{'strategy':<22}{'requests':>9}{'errors':>8}{'mean ms':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}   share backend-1/2/3")
for r in rows:
    lat = r["latency_ms"]; share = r.get("share", {})
    s = " / ".join(f"{100*share.get(b, 0):.0f}%" for b in ("backend-1", "backend-2", "backend-3"))
    print(f"{r['label']:<22}{r['sent']:>9}{r['errors']:>8}{lat['mean']:>9.2f}{lat['p50']:>9.2f}{lat['p90']:>9.2f}{lat['p99']:>9.2f}   {s}")
print()
rr, p2c = rows[0]["latency_ms"], rows[-1]["latency_ms"]
print(f"p2c_ewma learns each backend's latency from live traffic and sends most requests to the fast")
print(f"ones: mean {p2c['mean']:.2f} ms against {rr['mean']:.2f} ms for round robin, which sends a third to the 20 ms backend.")
PY

echo
echo "What the proxy reports (GET http://127.0.0.1:8090/api/v1/servers):"
curl -s http://127.0.0.1:8090/api/v1/servers >"$work/servers.json"
python3 - "$work/servers.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1])):
    lat = s["ewma_latency_ms"]
    lat = "n/a" if lat is None else f"{lat:.2f} ms"
    print(f"  {s['id']:<10} {s['address']:<16} healthy={str(s['healthy']).lower():<5} requests={s['requests']:<6} latency estimate={lat}")
PY
echo
echo "Metrics: curl -s http://127.0.0.1:8090/metrics | grep neurabalancer_   (while the demo runs)"
