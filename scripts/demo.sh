#!/usr/bin/env bash
# The demo: three simulated backends of different speeds (2, 5 and 20 ms), the proxy in
# front of them, the model server with the shipped model, and open-loop traffic through the
# proxy under each classic strategy and the learned one (`ml`) in turn, switched by hot
# reload; then `ml` once more with the model server stopped, to show the fallback. Prints what each strategy did with the traffic, and what the
# proxy recorded: one JSON line per request in target/demo/requests.jsonl (the JSONL
# request log, storage.request_log_file), kept after the demo for a closer look.
# Needs no database. Uses ports 8080 (proxy), 8090 (admin), 8081 (model server) and
# 8001-8003 (backends).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

./scripts/setup.sh
echo "demo: building (release)..." >&2
cargo build --release --quiet -p neurabalancer -p backend-sim -p nb-lab -p model-server

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
# The request log starts empty each run (the proxy appends to an existing file).
request_log="$root/target/demo/requests.jsonl"
mkdir -p "$(dirname "$request_log")"
rm -f "$request_log" "$request_log".[0-9]*
sed -i -E "s|^(  request_log_file:) null|\1 $request_log|" "$work/neurabalancer.yaml"
grep -q "request_log_file: $request_log" "$work/neurabalancer.yaml" ||
  { echo "demo: could not set storage.request_log_file in the demo config" >&2; exit 1; }

"$root/target/release/backend-sim" --fleet conf/sim/demo.yaml 2>"$work/sim.log" &
pids+=($!)
"$root/target/release/model-server" --listen 127.0.0.1:8081 --model model-server/models/scorer.onnx 2>"$work/model.log" &
model_pid=$!
pids+=("$model_pid")
# Without DATABASE_URL: the demo records to the file only, whatever the caller's environment.
env -u DATABASE_URL "$root/target/release/neurabalancer" run --config "$work/neurabalancer.yaml" 2>"$work/proxy.log" &
proxy_pid=$!
pids+=("$proxy_pid")

for _ in $(seq 100); do
  if curl -fs http://127.0.0.1:8090/health/ready >/dev/null 2>&1; then break; fi
  sleep 0.1
done
if ! curl -fs http://127.0.0.1:8090/health/ready >/dev/null; then
  echo "demo: the proxy did not become ready; its log:" >&2
  cat "$work/proxy.log" >&2
  exit 1
fi
for _ in $(seq 100); do
  if curl -fs http://127.0.0.1:8081/health >/dev/null 2>&1; then break; fi
  sleep 0.1
done
if ! curl -fs http://127.0.0.1:8081/health >/dev/null; then
  echo "demo: the model server did not load the model; its log:" >&2
  cat "$work/model.log" >&2
  exit 1
fi

rate=${DEMO_RATE:-400}
duration=${DEMO_DURATION:-6}
echo
echo "NeuraBalancer demo: $rate requests/s for ${duration}s per strategy through http://127.0.0.1:8080/"
echo "backends: backend-1 answers in 2 ms, backend-2 in 5 ms, backend-3 in 20 ms"
echo
run_strategy() { # strategy label
  sed -i -E "s/strategy: [a-z0-9_]+/strategy: $1/" "$work/upstreams.yaml"
  code=$(curl -s -o "$work/reload.json" -w '%{http_code}' -X POST http://127.0.0.1:8090/api/v1/reload)
  if [ "$code" != 200 ]; then echo "demo: reload failed:" >&2; cat "$work/reload.json" >&2; exit 1; fi
  "$root/target/release/nb-bench" --url http://127.0.0.1:8080/ --rate "$rate" --duration "$duration" \
    --warmup 1 --deadline-ms 1000 --label "$2" --json "$work/$2.json" >"$work/$2.txt"
}
for strategy in round_robin weighted_round_robin least_connections p2c_ewma prequal ml; do
  run_strategy "$strategy" "$strategy"
done
curl -s http://127.0.0.1:8090/api/v1/servers >"$work/servers-ml.json"
# The learned strategy without its model server: every decision falls back to ml.fallback.
kill "$model_pid" 2>/dev/null || true
wait "$model_pid" 2>/dev/null || true
run_strategy ml "ml (model server stopped)"

python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
names = ["round_robin", "weighted_round_robin", "least_connections", "p2c_ewma", "prequal", "ml",
         "ml (model server stopped)"]
rows = [json.load(open(os.path.join(work, n + ".json"))) for n in names]
print(f"{'strategy':<26}{'requests':>9}{'errors':>8}{'mean ms':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}   share backend-1/2/3")
for r in rows:
    lat = r["latency_ms"]; share = r.get("share") or r.get("response_share", {})
    s = " / ".join(f"{100*share.get(b, 0):.0f}%" for b in ("backend-1", "backend-2", "backend-3"))
    print(f"{r['label']:<26}{r['sent']:>9}{r['errors']:>8}{lat['mean']:>9.2f}{lat['p50']:>9.2f}{lat['p90']:>9.2f}{lat['p99']:>9.2f}   {s}")
print()
rr, p2c, pq, ml = (rows[names.index(n)]["latency_ms"] for n in ("round_robin", "p2c_ewma", "prequal", "ml"))
print(f"p2c_ewma and prequal learn each backend's latency from live traffic and send most requests to the")
print(f"fast ones: mean {p2c['mean']:.2f} ms and {pq['mean']:.2f} ms against {rr['mean']:.2f} ms for round robin, which sends a third")
print(f"to the 20 ms backend. ml asks the model server every 100 ms what each backend will take at each")
print(f"number of requests in flight and decides with the live counts: mean {ml['mean']:.2f} ms, p99 {ml['p99']:.2f} ms.")
PY

echo
echo "What the proxy reported while ml ran with its model (GET http://127.0.0.1:8090/api/v1/servers):"
python3 - "$work/servers-ml.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1])):
    lat = s["ewma_latency_ms"]
    lat = "n/a" if lat is None else f"{lat:.2f} ms"
    ml = s.get("ml_score") or {}
    pred = ml.get("predicted_latency_ms")
    pred = "n/a" if pred is None else f"{pred:.2f} ms (calibration {ml.get('calibration', 1):.2f})"
    print(f"  {s['id']:<10} healthy={str(s['healthy']).lower():<5} requests={s['requests']:<6} latency estimate={lat:<9} model predicts {pred}")
PY
echo
echo "Metrics: curl -s http://127.0.0.1:8090/metrics | grep neurabalancer_   (while the demo runs)"

curl -s http://127.0.0.1:8090/metrics >"$work/metrics.txt"
# A graceful stop (SIGTERM) writes every record still queued before the process exits.
kill -TERM "$proxy_pid"
for _ in $(seq 300); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$proxy_pid" 2>/dev/null; then
  echo "demo: the proxy did not exit after SIGTERM; its log:" >&2
  cat "$work/proxy.log" >&2
  exit 1
fi
wait "$proxy_pid" 2>/dev/null || true
echo
python3 - "$request_log" "${request_log#"$root"/}" "$work/metrics.txt" <<'PY'
import glob, json, sys
path, shown, metrics = sys.argv[1:4]
files = sorted(glob.glob(path + ".[0-9]*"), key=lambda f: -int(f.rsplit(".", 1)[1])) + [path]
records = [json.loads(line) for f in files for line in open(f)]
by_strategy = {}
for r in records:
    by_strategy[r["strategy"]] = by_strategy.get(r["strategy"], 0) + 1
dropped = sum(float(l.rsplit(" ", 1)[1]) for l in open(metrics)
              if l.startswith("neurabalancer_store_rows_dropped_total{"))
dropped = "none" if dropped == 0 else f"{dropped:.0f}"
print(f"Request records: {len(records)} in {shown} (storage.request_log_file), one JSON object")
print(f"per request, {dropped} dropped; what was still queued was written on the graceful stop (SIGTERM).")
print("By strategy: " + ", ".join(f"{k} {v}" for k, v in by_strategy.items()))
ml = [r for r in records if r["strategy"] == "ml"]
decided = sum(1 for r in ml if r.get("ml_decided"))
reasons = {}
for r in ml:
    if r.get("ml_fallback"):
        reasons[r["ml_fallback"]] = reasons.get(r["ml_fallback"], 0) + 1
why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"
print(f"ml: the model decided {decided} of {len(ml)} requests; the fallback (p2c_ewma) decided the rest,")
print(f"by reason: {why} (the model server was stopped for the last run).")
print("The last record (f_*: the chosen backend as the strategy saw it; f_reported_*: its ORCA report):")
fields = [json.dumps({k: v})[1:-1] for k, v in records[-1].items()]
line = "  {"
for i, f in enumerate(fields):
    f += "," if i < len(fields) - 1 else "}"
    if len(line) + 1 + len(f) > 100:
        print(line)
        line = "   "
    line += ("" if line.endswith(("{", "   ")) else " ") + f
print(line)
PY
