#!/usr/bin/env python3
"""Writes docs/benchmarks.md from the results.json files that scripts/bench.sh produced."""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "docs", "bench")


def load(name):
    with open(os.path.join(BENCH, name, "results.json")) as f:
        return json.load(f)


def ms(x):
    return f"{x / 1000:.2f} s" if x >= 1000 else (f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms")


def table(sr, ratio_to):
    base = next(a for a in sr["aggregates"] if a["strategy"] == ratio_to)["latency_ms"]["p99"]
    rows = [
        f"| strategy | p50 | p90 | p99 | p99.9 | max | errors | goodput (req/s) | p99 / {ratio_to} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in sr["aggregates"]:
        lat = a["latency_ms"]
        rows.append(
            f"| {a['strategy']} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | {ms(lat['p999'])} "
            f"| {ms(lat['max'])} | {100 * a['error_rate']:.2f} % | {a['goodput_rps']:.0f} | {lat['p99'] / base:.2f}× |"
        )
    return "\n".join(rows)


def shares(sr):
    """Share of requests per backend, median run of each strategy, for backends that differ."""
    out = []
    for a in sr["aggregates"]:
        runs = [r for r in sr["runs"] if r["strategy"] == a["strategy"]]
        if not runs:
            continue
        share = runs[len(runs) // 2]["report"].get("share", {})
        top = ", ".join(f"{k} {100 * v:.1f} %" for k, v in sorted(share.items()))
        out.append(f"- **{a['strategy']}**: {top}")
    return "\n".join(out)


def main():
    real = [load(n) for n in ("steady", "s2", "s5")]
    sim = load("sim")
    m = real[0]["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Figures from `./scripts/bench.sh` (the command lines are in that script), on one machine of",
        f"the kind CI uses: {m['nproc']} cores ({m['cpu']}), {m['mem_mib'] // 1024} GiB, Linux {m['kernel']}.",
        "The load generator, the simulated fleet and the proxy share those two cores; every proxy",
        "(ours, nginx, HAProxy) runs with one worker thread. Latency counts from each request's",
        "intended send time (open-loop Poisson arrivals); a request not answered within the deadline",
        "(1 s) fails and counts at the deadline. Every row is the median of 3 repetitions; within a",
        "repetition the strategies run one after the other on the same arrival schedule (same seed),",
        "each with a fresh fleet and proxy. `nb-bench` writes these tables, `results.json` and the",
        "charts to `docs/bench/`.",
        "",
        "Scenarios are described in [`conf/scenarios/README.md`](../conf/scenarios/README.md).",
        "",
        "Passive health caps ejections at `max_ejection_percent` (10 %) and counts only gateway",
        "failures (502/503/504, resets, timeouts) towards them, with panic routing below 50 % healthy.",
        "The model and the lab's s2-noisy-neighbour were re-run with that rule; the other lab tables",
        "were taken before it, and the model gives identical figures for them under both rules. The",
        "lab's own fixes re-take every table.",
        "",
        "## The lab",
        "",
    ]
    for res in real:
        for sr in res["scenarios"]:
            sc = sr["scenario"]
            lines += [
                f"### {sc['name']}",
                "",
                f"{sc['description']}. Offered {sr['target_rps']:.0f} req/s; "
                f"{sc['duration_s']:.0f} s measured after {sc['warmup_s']:.0f} s of warm-up.",
                "",
                table(sr, sr["baseline"]),
                "",
                "Share of requests per backend (median repetition):",
                "",
                shares(sr),
                "",
            ]
            for chart in sr.get("charts", []):
                lines += [f"![{os.path.basename(chart)}](bench/{res_dir(res)}/{os.path.basename(chart)})", ""]
            for sk in sr.get("skipped", []):
                lines += [f"Skipped {sk['strategy']}: {sk['reason']}", ""]
    lines += [
        "## The model",
        "",
        "`nb-bench --scenario conf/scenarios --simulate` runs the same six scenarios through the",
        "discrete-event model, which drives the proxy's own strategy code (crate `nb-strategy`) on",
        "a simulated clock, at full scenario durations. `oracle` knows every backend's true queue",
        "and speed: the ceiling. p99 is shown as a multiple of the oracle's.",
        "",
    ]
    for sr in sim["scenarios"]:
        sc = sr["scenario"]
        lines += [f"### {sc['name']} (model)", "", table(sr, "oracle"), ""]
    lines += [
        "## Model against lab",
        "",
        "`cargo test -p backend-sim --test lab_run the_model_agrees_with_the_lab_on_s0_and_s1` runs",
        "s0 and s1 in both and checks that they order the strategies alike and that the lab's p99",
        "lies within 0.75–1.6× the model's plus 10 ms (the model leaves out the simulator's 1 ms",
        "timer granularity, the proxy hop and the shared cores; a short run's p99 also moves by",
        "10–15 % between seeds).",
        "",
    ]
    store = os.path.join(BENCH, "store.md")
    if os.path.exists(store):
        lines += [
            "## Request recording",
            "",
            "What recording costs, from `./scripts/bench_store.sh` (`cargo bench -p neurabalancer",
            "--bench store`, which writes `docs/bench/store.md`). PostgreSQL is a throwaway cluster on",
            "disk with PostgreSQL's default durability settings; the proxy writes with asynchronous",
            "commit, into a `requests` table that already holds a million rows.",
            "",
            "Throughput is `wrk -t1 -c32` against one proxy worker thread in front of a zero-delay",
            "backend, measured two ways. **Side by side** is the proxy's own cost: the three proxies",
            "(off, PostgreSQL, JSONL) run at once on CPU 0, each in a session of its own so the",
            "scheduler gives each process the same share of the CPU, its writer thread included, and a",
            "wrk each loads them in the same 3 s slices; wrk, the backend and PostgreSQL keep to the",
            "other CPU, as a database on its own host would. The host's drift then falls on all three",
            "at once: the same `off` proxy run alone moves by up to 40 % between runs a few seconds",
            "apart on this machine, more than the effect measured, which is why single runs of an",
            "earlier version of this bench gave anything from 0.79× to 1.01×. **One at a time** is the",
            "whole two-vCPU machine: proxy, wrk, backend and PostgreSQL share both CPUs, wrk takes",
            "turns between the proxies, and each recording slice is compared with the `off` slices",
            "on both sides of it; there PostgreSQL's own ingest competes with the proxy for the CPUs.",
            "\"records\": rows the proxy reported written, rows that arrived in the table, and records",
            "dropped.",
            "",
            "Latency: open-loop Poisson arrivals (`nb-bench`'s generator) through the proxy to a 5 ms",
            "backend; \"postgres, stopped\" records to a database that is down for the whole run, so",
            "its queue fills and records are dropped and counted.",
            "",
            "Three runs of the throughput part (the tables below are from the second) gave, side by",
            "side, PostgreSQL **0.946×, 0.959× and 0.950×** and JSONL 0.944×, 0.934× and 0.929×: the",
            "proxy's cost of recording is about 5 % of its throughput, within the 0.9× target. Building",
            "the record and queueing it take about 1 % of the worker thread in a profile; the writer",
            "thread encoding the rows about 1.5 %. One at a time on the shared two vCPUs, PostgreSQL",
            "gave 0.915×, 0.899× and 0.888× and JSONL 0.866×, 0.949× and 0.932×: there the database's",
            "own ingest takes its CPU from the proxy, and PostgreSQL recording lands at the 0.9× line,",
            "just under it in two of three runs. Latency at a fixed rate is unaffected, with the",
            "database up or down. The writer sustains about 200,000 rows/s (target 50,000).",
            "",
        ]
        with open(store) as f:
            lines += [f.read().rstrip(), ""]
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as f:
        f.write("\n".join(lines))


def res_dir(res):
    return {"s2-noisy-neighbour": "s2", "s5-cold-join": "s5"}.get(res["scenarios"][0]["scenario"]["name"], "steady")


if __name__ == "__main__":
    sys.exit(main())
