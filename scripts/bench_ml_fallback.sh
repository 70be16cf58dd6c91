#!/usr/bin/env bash
# Client latency while the model server hangs: `ml` whose model server is stopped (SIGSTOP:
# it accepts connections and never answers, the worst case for a client) against `p2c_ewma`
# alone, on the same fleet, side by side in alternating runs (REPS pairs, order swapped each
# pair). Prints each run's p99 and the paired ratio ml-hung / p2c_ewma. The proxies run on
# CPU 0, the generator and the fleet on the others. Takes about 2 × REPS × (DURATION + 3) s.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
./scripts/setup.sh
cargo build --release --quiet -p neurabalancer -p backend-sim -p nb-lab -p model-server
reps=${REPS:-5}
rate=${RATE:-400}
duration=${DURATION:-10}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pin() { if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
# For background processes (`pin_exec CPU cmd ... &`): the subshell becomes the process, so
# `$!` is its pid (the model server must be the process that SIGSTOP reaches).
pin_exec() { if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }

# Ten exponential servers of different speeds: a fleet where the strategy matters.
ports=()
{
  echo "backends:"
  for i in $(seq 10); do
    p=$(free_port); ports+=("$p")
    mean=$((i <= 8 ? 10 : 40))
    echo "  - { id: b$i, listen: \"127.0.0.1:$p\", slots: 4, service: { dist: exponential, mean_ms: $mean } }"
  done
} >"$work/fleet.yaml"
pin_exec 1 "$root/target/release/backend-sim" --fleet "$work/fleet.yaml" 2>"$work/sim.log" &
pids+=($!)
mport=$(free_port)
pin_exec 0 "$root/target/release/model-server" --listen "127.0.0.1:$mport" --model model-server/models/scorer.onnx 2>"$work/model.log" &
model_pid=$!
pids+=("$model_pid")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$mport/health" >/dev/null 2>&1 && break; sleep 0.1; done

start_proxy() { # name strategy -> sets listen/admin ports in $work/$1.ports
  local name=$1 strategy=$2 listen admin
  listen=$(free_port); admin=$(free_port)
  mkdir -p "$work/$name"
  cat >"$work/$name/neurabalancer.yaml" <<YAML
listen: 127.0.0.1:$listen
upstreams_file: upstreams.yaml
admin: { listen: "127.0.0.1:$admin" }
threads: 1
ml: { endpoint: "http://127.0.0.1:$mport" }
telemetry: { log_format: text }
YAML
  {
    echo "pools:"
    echo "  bench:"
    echo "    strategy: $strategy"
    echo "    servers:"
    for i in $(seq 10); do echo "      - { id: b$i, address: \"127.0.0.1:${ports[$((i - 1))]}\" }"; done
    echo "routes:"
    echo "  - { host: \"*\", path_prefix: /, pool: bench }"
  } >"$work/$name/upstreams.yaml"
  pin_exec 0 env -u DATABASE_URL RUST_LOG=warn "$root/target/release/neurabalancer" run --config "$work/$name/neurabalancer.yaml" 2>"$work/$name/proxy.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$listen $admin" >"$work/$name.ports"
}
start_proxy ml ml
start_proxy p2c p2c_ewma
sleep 1
# The model server hangs from now on: every scoring call of the ml proxy times out.
kill -STOP "$model_pid"
sleep 1
run() { # name rep
  local listen
  listen=$(cut -d' ' -f1 "$work/$1.ports")
  pin 1 "$root/target/release/nb-bench" --url "http://127.0.0.1:$listen/" --rate "$rate" --duration "$duration" \
    --warmup 2 --deadline-ms 1000 --seed "$2" --label "$1" --json "$work/$1.$2.json" >/dev/null
}
for r in $(seq "$reps"); do
  if ((r % 2)); then run ml "$r"; run p2c "$r"; else run p2c "$r"; run ml "$r"; fi
done
admin=$(cut -d' ' -f2 "$work/ml.ports")
curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^neurabalancer_ml_(fallback_total|circuit_breaker_open|decisions_total)' || true
fallbacks=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^neurabalancer_ml_fallback_total/ { n += $2 } END { print n + 0 }')
if [ "$fallbacks" = 0 ]; then
  echo "bench_ml_fallback: the ml proxy never fell back: the model server was not hung" >&2
  exit 1
fi
python3 - "$work" "$reps" <<'PY'
import json, math, os, sys
work, reps = sys.argv[1], int(sys.argv[2])
rows, logs = [], []
for r in range(1, reps + 1):
    a = json.load(open(os.path.join(work, f"ml.{r}.json")))
    b = json.load(open(os.path.join(work, f"p2c.{r}.json")))
    pa, pb = a["latency_ms"]["p99"], b["latency_ms"]["p99"]
    logs.append(math.log(pa / pb))
    print(f"rep {r}: ml (model server hung) p99 {pa:.2f} ms, errors {a['errors']}; p2c_ewma p99 {pb:.2f} ms, errors {b['errors']}; ratio {pa / pb:.3f}")
gm = math.exp(sum(logs) / len(logs))
print(f"paired p99 ratio ml-hung / p2c_ewma: geometric mean {gm:.3f} over {reps} pairs (target ≤ 1.10)")
PY
