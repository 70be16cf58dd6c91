#!/usr/bin/env python3
"""Writes docs/benchmarks.md from the results.json files that scripts/bench.sh produced."""
import json
import math
import os
import random
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "docs", "bench")


def load(name):
    with open(os.path.join(BENCH, name, "results.json")) as f:
        return json.load(f)


def ms(x):
    if x is None or x != x:
        return "–"
    return f"{x / 1000:.2f} s" if x >= 1000 else (f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms")


def ratio(r):
    if not r:
        return "–"
    if r["pairs"] < 2:
        return f"{r['ratio']:.2f}×"
    mark = " **" if (r["ci_high"] < 1 or r["ci_low"] > 1) else ""
    return f"{mark.strip()}{r['ratio']:.2f}× [{r['ci_low']:.2f}, {r['ci_high']:.2f}]{mark.strip()}"


def table(sr, lab):
    base = sr["baseline"]
    head = "| strategy | p50 | p90 | p99 | p99.9 | max | ok p99 | errors | queue p50 | queue p99 |"
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if lab:
        head += " lag p99 |"
        rule += "---|"
    head += f" goodput (req/s) | p99 / {base} [95 % CI] |"
    rule += "---|---|"
    rows = [head, rule]
    for a in sr["aggregates"]:
        lat = a["latency_ms"]
        row = (
            f"| {a['strategy']} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | {ms(lat['p999'])} "
            f"| {ms(lat['max'])} | {ms(a['success_p99_ms'])} | {100 * a['error_rate']:.2f} % "
            f"| {ms(a['queueing_p50_ms'])} | {ms(a['queueing_p99_ms'])} |"
        )
        if lab:
            flag = " ⚑" if a["lagging_runs"] else ""
            row += f" {ms(a['lag_p99_ms'])}{flag} |"
        row += f" {a['goodput_rps']:.0f} | {ratio(a['p99_vs_baseline'])} |"
        rows.append(row)
    return "\n".join(rows)


def shares(sr):
    """Median share of routing decisions per backend, per strategy."""
    out = []
    for a in sr["aggregates"]:
        share = a.get("share", {})
        top = ", ".join(f"{k} {100 * v:.1f} %" for k, v in sorted(share.items()))
        out.append(f"- **{a['strategy']}**: {top}")
    return "\n".join(out)


def p99s(sr):
    """Headline p99 per strategy and repetition."""
    return per_rep(sr, lambda report: report["latency_ms"]["p99"])


def error_rates(sr):
    """Error rate per strategy and repetition."""
    return per_rep(sr, lambda report: report["error_rate"])


def per_rep(sr, value):
    out = {}
    for run in sr["runs"]:
        out.setdefault(run["strategy"], {})[run["rep"]] = value(run["report"])
    return out


def bootstrap_mean(xs, resamples=4000):
    """Mean of `xs` with a 95 % percentile-bootstrap interval (fixed seed)."""
    rng = random.Random(1)
    boot = sorted(sum(rng.choice(xs) for _ in xs) / len(xs) for _ in range(resamples))
    return sum(xs) / len(xs), boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]


def paired(a, b):
    """Geometric mean of a[r] / b[r] over shared repetitions, with a 95 % percentile-bootstrap
    interval (fixed seed), as nb-bench pairs its ratios."""
    logs = [math.log(a[r] / b[r]) for r in sorted(set(a) & set(b)) if a[r] > 0 and b[r] > 0]
    if not logs:
        return None
    mean, low, high = bootstrap_mean(logs)
    return {"ratio": math.exp(mean), "ci_low": math.exp(low), "ci_high": math.exp(high), "pairs": len(logs)}


def paired_difference(a, b):
    """Mean of a[r] − b[r] over shared repetitions, with a 95 % percentile-bootstrap interval."""
    diffs = [a[r] - b[r] for r in sorted(set(a) & set(b))]
    if not diffs:
        return None
    mean, low, high = bootstrap_mean(diffs)
    return {"difference": mean, "ci_low": low, "ci_high": high, "pairs": len(diffs)}


def aggregate(sr, name):
    return next((a for a in sr["aggregates"] if a["strategy"] == name), None)


def prequal_table(real, sim):
    """`prequal` against the best of the others in the lab, and against the model's references."""
    rows = [
        "| scenario | prequal p99 | best other (p99) | prequal / best other [95 % CI] | ≤ 1.05× | prequal errors "
        "| model: prequal p99 | best classic | greedy | clairvoyant |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    model = {sr["scenario"]["name"]: sr for sr in sim["scenarios"]}
    lab = [sr for res in real for sr in res["scenarios"]]
    for sr in sorted(lab, key=lambda x: x["scenario"]["name"]):
        name = sr["scenario"]["name"]
        mine = aggregate(sr, "prequal")
        if not mine:
            continue
        others = [a for a in sr["aggregates"] if a["strategy"] != "prequal"]
        best = min(others, key=lambda a: a["latency_ms"]["p99"])
        runs = p99s(sr)
        r = paired(runs["prequal"], runs[best["strategy"]])
        ok = "yes" if r and r["ratio"] <= 1.05 else "**no**"
        m = model.get(name)
        cells = ["–"] * 4
        if m:
            mp = aggregate(m, "prequal")
            classic = [
                a for a in m["aggregates"]
                if a["strategy"] not in ("prequal", "greedy", "clairvoyant") and "@" not in a["strategy"]
            ]
            mb = min(classic, key=lambda a: a["latency_ms"]["p99"])
            cells = [
                ms(mp["latency_ms"]["p99"]),
                f"{mb['strategy']} {ms(mb['latency_ms']['p99'])}",
                ms(aggregate(m, "greedy")["latency_ms"]["p99"]),
                ms(aggregate(m, "clairvoyant")["latency_ms"]["p99"]),
            ]
        rows.append(
            f"| {name} | {ms(mine['latency_ms']['p99'])} | {best['strategy']} {ms(best['latency_ms']['p99'])} "
            f"| {ratio(r)} | {ok} | {100 * mine['error_rate']:.2f} % | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def sampled_table(real):
    """The separate lab run of `prequal` with 3 probes (docs/bench/prequal-sampled) against the main run's `prequal` (the defaults) and the best of
    the others, paired by repetition."""
    path = os.path.join(BENCH, "prequal-sampled", "results.json")
    if not os.path.exists(path):
        return None
    rows = [
        "| scenario | prequal (defaults) | prequal, 3 probes | best other (p99) "
        "| defaults / best other [95 % CI] | 3 probes / best other [95 % CI] | errors, 3 probes |",
        "|---|---|---|---|---|---|---|",
    ]
    main = {sr["scenario"]["name"]: sr for res in real for sr in res["scenarios"]}
    for sr in load("prequal-sampled")["scenarios"]:
        name = sr["scenario"]["name"]
        m = main[name]
        alt = aggregate(sr, "prequal")
        others = [a for a in m["aggregates"] if a["strategy"] != "prequal"]
        best = min(others, key=lambda a: a["latency_ms"]["p99"])
        runs = p99s(m)
        rows.append(
            f"| {name} | {ms(aggregate(m, 'prequal')['latency_ms']['p99'])} | {ms(alt['latency_ms']['p99'])} "
            f"| {best['strategy']} {ms(best['latency_ms']['p99'])} "
            f"| {ratio(paired(runs['prequal'], runs[best['strategy']]))} "
            f"| {ratio(paired(p99s(sr)['prequal'], runs[best['strategy']]))} | {100 * alt['error_rate']:.2f} % |"
        )
    return "\n".join(rows)


def sweep_table():
    """The model's sweep of `prequal`'s probes and hot quantile (docs/bench/prequal-sweep, written
    by scripts/prequal_sweep.sh): per point and scenario, `prequal`'s p99 over the best classic
    strategy's, paired by repetition."""
    folder = os.path.join(BENCH, "prequal-sweep")
    if not os.path.isdir(folder):
        return None
    points = []
    for f in sorted(os.listdir(folder)):
        if f.endswith(".json"):
            with open(os.path.join(folder, f)) as fh:
                points.append(json.load(fh))
    points.sort(key=lambda p: (p["probes"], p["hot_quantile"]))
    names = sorted(points[0]["scenarios"])
    rows = [
        "| probes | hot quantile | " + " | ".join(n.split("-")[0] for n in names) + " | worst |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for p in points:
        cells, worst = [], 0.0
        for n in names:
            per = p["scenarios"][n]
            pq = dict(enumerate(per["prequal"]["p99_ms"]))
            classic = {k: v for k, v in per.items() if k not in ("prequal", "greedy", "clairvoyant")}
            best = min(classic, key=lambda k: sorted(classic[k]["p99_ms"])[len(classic[k]["p99_ms"]) // 2])
            r = paired(pq, dict(enumerate(per[best]["p99_ms"])))
            worst = max(worst, r["ratio"])
            cells.append(f"{r['ratio']:.3f}")
        default = " (default)" if (p["probes"], p["hot_quantile"]) == (16, 0.84) else ""
        rows.append(f"| {p['probes']}{default} | {p['hot_quantile']} | " + " | ".join(cells) + f" | {worst:.3f} |")
    return "\n".join(rows)


def before_after(real, sim):
    """`p2c_ewma` on s6 before failures cost (docs/bench/s6-before) and now."""
    rows = ["| where | strategy | errors before | errors now | p99 before | p99 now |", "|---|---|---|---|---|---|"]
    now_lab = next(sr for res in real for sr in res["scenarios"] if sr["scenario"]["name"] == "s6-shedding")
    now_sim = next(sr for sr in sim["scenarios"] if sr["scenario"]["name"] == "s6-shedding")
    for where, before_dir, now in (("lab", "s6-before/lab", now_lab), ("model", "s6-before/model", now_sim)):
        before = load(before_dir)["scenarios"][0]
        for strategy in ("p2c_ewma", "least_connections"):
            b, n = aggregate(before, strategy), aggregate(now, strategy)
            rows.append(
                f"| {where} | {strategy} | {100 * b['error_rate']:.2f} % | {100 * n['error_rate']:.2f} % "
                f"| {ms(b['latency_ms']['p99'])} | {ms(n['latency_ms']['p99'])} |"
            )
    return "\n".join(rows)


# What the tables show, from the run these figures come from (kept by hand: re-read after a re-run).
FINDINGS = [
    "**Failures cost (s3, s6).** With a fast 503 priced at its failure penalty instead of taken as a fast "
    "answer, `p2c_ewma` sends the sinkhole almost nothing: 0.10 % errors on s3 (1.90 % before) and a p99 of "
    "120 ms instead of the deadline; `orca_least_delay` 0.04 % (0.91 %). On s6, where servers shed only while "
    "their short queue is full, `p2c_ewma` drops from 5.97 % to 3.50 % errors: what is left is two random "
    "choices, both sometimes full; the full-scan rules stay under 0.5 %.",
    "**`prequal`** (16 candidates, Q_RIF 0.84, latency differences within noise left to the requests in "
    "flight) is within 1.05× of the best other strategy's p99 (paired, 95 % interval) on all seven "
    "scenarios: s0 1.02× [1.00, 1.04] and s3 1.01× [1.01, 1.02] against nginx, s4 1.00× [1.00, 1.00], s2 "
    "1.00× (every strategy at the deadline; `prequal` 14.2 % errors against `orca_least_delay`'s 13.8 %). "
    "It wins s6 (0.73× [0.69, 0.77] against `orca_least_delay`, with 0.01 % errors against 0.45 %), s5 "
    "(0.87× [0.85, 0.89]) and s1 (0.95× [0.93, 0.96]). On the fleets of equals it still queues a little "
    "more than the least-loaded rules (s0 queue p99 15 ms against 3 ms): a difference between two "
    "servers' latency averages larger than two standard errors still decides before the requests in "
    "flight do, and on a fleet of equals some of those differences are chance.",
    "**Noise-aware ties.** Before a latency difference within two standard errors was treated as a tie, "
    "the lowest of several equal averages took every request until its queue made it hot: s0 1.05× "
    "[1.04, 1.06] and s4 1.05× [1.00, 1.14] in the previous run, s4 queue p99 26 ms (now 1.0 ms).",
    "**Probes.** With 3 probes, the power-of-d reading (separate lab run below), `prequal` is 1.00–1.01× "
    "on s0, s3 and s4 but 1.01× on s1 and 0.90× on s6 with 0.21 % errors, against 0.95× and 0.73× "
    "(0.01 %) with 16: the fast servers it sampled are often all hot or full, and it falls to a cold slow "
    "one. The model's sweep agrees and puts every point with 8 or 16 probes within 1.01× of the best "
    "classic strategy.",
    "**Skew (s1):** every adaptive strategy keeps round robin's 16 % timeouts away; `prequal` (93 ms) and "
    "`orca_least_delay` (97 ms) at 0.09–0.10× round robin, then `p2c_ewma` (0.16×), then "
    "`least_connections`, nginx and HAProxy (0.23–0.24×).",
    "**Overload (s2, ramp to 1.3× capacity):** every strategy's p99 sits at the deadline; errors and goodput "
    "rank them: `orca_least_delay` 13.8 % and 879 req/s, `prequal` 14.2 % and 876, `least_connections` "
    "and `p2c_ewma` 15.3–16.6 %, round robin 18.5 %. nginx (43.1 % errors) and HAProxy (35.9 %) do "
    "worse: their passive health marks overloaded backends down on their queue-full 503s and the lost "
    "capacity cascades; ours caps ejections at 10 % of the pool.",
    "**Mixed classes (s4)** and **homogeneous (s0):** every strategy but round robin within 5 % of the best; "
    "the queueing delay separates them (s4 queue p99: round robin 43 ms, the others 0.8–1.6 ms).",
    "**ORCA reports** buy little on these fleets: `prequal@no_orca` and `orca_least_delay@no_orca` score "
    "within 2 % of the strategies with reports in the model, on every scenario.",
    "**The model's references** (greedy, clairvoyant) sit within 1 % of `prequal` on s0, s1, s3, s4 and "
    "s5 and 0–2 % below it on s6: little room is left for a learned strategy on these fleets' p99.",
]

THREATS = [
    "**One small machine.** Generator, fleet and proxy share two cores: the proxy has one to itself, "
    "the generator and the fleet the other. Every proxy pays the same overhead, but a proxy that needs "
    "more CPU per request than one core gives at these rates would show it here and not on a larger "
    "host; the raw-speed comparison is a separate benchmark.",
    "**Simulated backends.** Service is a sleep drawn from a distribution (exponential, log-normal, "
    "bounded Pareto) in a FIFO queue behind a fixed number of slots. Real services share CPUs between "
    "requests, slow down together (GC, noisy neighbours on the same host) and do not report exact queue "
    "lengths; a strategy that wins here wins on this kind of queueing, not on every fleet.",
    "**Loopback network.** No real round-trip time, loss or bandwidth limit; connection setup is almost "
    "free, so the keep-alive settings barely matter here.",
    "**Short runs.** 10-30 s measured per run and 4 repetitions: a p99 rests on a few hundred requests "
    "per run, p99.9 and max on the pooled repetitions. The intervals are over repetitions, with pairs "
    "sharing arrivals and service draws; an interval that contains 1 does not separate two strategies.",
    "**Failures at the deadline.** Counting every failure at the deadline makes p99 a step function of "
    "the error rate: above 1 % errors the headline p99 is the deadline, and the error rate and "
    "success-only p99 are the figures that still tell strategies apart.",
    "**Passive health is not the same everywhere.** The settings below bring the peers as close to ours "
    "as their free versions allow; nginx in particular retries the 502/503/504 it counts, which hides "
    "failing backends from clients where ours and HAProxy answer them.",
    "**Decisions the backends did not see.** The share of routing decisions is counted by the "
    "backends; an attempt refused at connect (a backend that is down) is not counted in the lab (the "
    "model counts it).",
    "**The model leaves out the proxy hop.** A fast failure costs the model nothing and the lab a few "
    "hundred microseconds; this matters where a strategy chases idle-looking backends (s3).",
    "**Our scenarios.** Seven scenarios written by the people who wrote the strategies. A learned strategy "
    "must be tuned on the general case and also judged on scenarios that are not in the repository, on "
    "seeds disjoint from its training data.",
]


def main():
    real = [load(n) for n in ("steady", "s2", "s5")]
    sim = load("sim")
    m = real[0]["machine"]
    # nb-bench pins itself to one CPU in the lab, so a lab run sees one: the model's run (not
    # pinned) sees the machine.
    cores = max(r["machine"]["nproc"] for r in real + [sim])
    started = min(r["started_unix_ms"] for r in real + [sim]) / 1000
    date = time.strftime("%Y-%m-%d", time.gmtime(started))
    reps = real[0]["scenarios"][0]["reps"]
    sim_reps = sim["scenarios"][0]["reps"]
    lines = [
        "# Benchmarks",
        "",
        "Figures from `./scripts/bench.sh` (the command lines are in that script; `scripts/bench_report.py`",
        "writes this page from `docs/bench/*/results.json`), on one machine of the kind CI uses:",
        f"{cores} cores ({m['cpu']}), {m['mem_mib'] // 1024} GiB, Linux {m['kernel']}, nothing else running,",
        f"on {date} (UTC).",
        f"The lab ran {reps} repetitions of every strategy on every scenario, the model {sim_reps}.",
        "Scenarios are described in [`conf/scenarios/README.md`](../conf/scenarios/README.md).",
        "",
        "## Method",
        "",
        "- **Load.** Open-loop Poisson arrivals from one schedule (`nb_lab::arrivals`), the same for the",
        "  lab and the model; latency counts from each request's intended send time, so a stall of the",
        "  proxy cannot hide. A request not fully answered by the deadline (1 s; 2 s in s4) is dropped.",
        "- **Common random numbers.** In repetition *r* every strategy runs with seed = scenario seed + *r*:",
        "  the same arrivals, and because the generator tells each backend the request's index",
        "  (`x-nb-request`), the same fate and service time for a request at a given backend (a request's",
        "  size is the same quantile of its class's distribution at every backend). Strategies run one",
        "  after the other within a repetition, each with a fresh fleet and proxy, and the order rotates",
        "  between repetitions.",
        "- **Fair settings.** Every proxy (ours, nginx, HAProxy) runs one worker thread pinned to CPU 0;",
        "  the generator and the fleet share CPU 1. Every process gets the same descriptor limit; upstream",
        "  keep-alive pools are 1024 idle connections everywhere; HAProxy has `option abortonclose` (it",
        "  drops requests whose client left, as Pingora and nginx do); nginx keeps connections for a",
        "  million requests. `DATABASE_URL` and every `NEURABALANCER_*` variable are removed from the",
        "  children's environment: no proxy records requests. Passive health, per proxy, below.",
        "",
        "Columns:",
        "",
        "- **p50, p90, p99** (medians over repetitions) and **p99.9, max** (from the pooled histogram of",
        "  every repetition): the headline latency, in which **every failure counts at the deadline** (a",
        "  non-2xx answer, a refused or reset connection, a timeout). A strategy cannot lower these by",
        "  sending traffic to a backend that fails fast.",
        "- **ok p99**: the 2xx answers only; **errors**: the share of requests that failed.",
        "- **queue p50, queue p99**: queueing delay, latency minus the request's own service time as the",
        "  backend reports it (`server-timing: service;dur=…`), over 2xx answers: the waiting in the proxy,",
        "  on the wire and in the backend's queue, the part a load balancer controls. In the model there is",
        "  no proxy hop, so its queue p50 is often 0.",
        "- **lag p99**: the generator's own lateness (the worst repetition). A run above 5 ms is run again",
        "  (twice at most) and marked ⚑ if it still lagged.",
        "- **goodput**: 2xx answers within the deadline per second.",
        "- **p99 / baseline [95 % CI]**: the headline p99 over the first strategy's, **paired per",
        "  repetition** (geometric mean of the per-repetition ratios) with a 95 % percentile-bootstrap",
        "  interval over repetitions; **bold** when the interval excludes 1.",
        "- **Routing decisions per backend**: measured requests each backend received, as the backends",
        "  counted them (timeouts included; the responses' `x-backend-id` would lose every timeout).",
        "",
        "Passive health (every scenario here runs with `passive_health: on`):",
        "",
    ]
    seen = []
    for res in real:
        for sr in res["scenarios"]:
            for note in sr.get("passive_health", []):
                if note not in seen:
                    seen.append(note)
    lines += [f"- {n}" for n in seen]
    lines += [""]
    if FINDINGS:
        lines += ["## What the figures say", ""] + [f"- {f}" for f in FINDINGS] + [""]
    lines += [
        "## `prequal` against the others",
        "",
        "Per scenario, the lab's headline p99 of `prequal` against the best of every other strategy",
        "and peer on that scenario (the one with the lowest median p99), paired per repetition as",
        "above; then the model's `prequal`, its best classic strategy and its two references.",
        "",
        prequal_table(real, sim),
        "",
    ]
    lines += [
        "## `prequal`'s parameters",
        "",
        "`prequal` weighs 16 candidates per decision (every server of these ten-server fleets) and",
        "counts a server hot when its requests in flight are above more than 84 % of the recent",
        "samples. The model's sweep (`scripts/prequal_sweep.sh`, 12 repetitions per point, every",
        "scenario at full duration) chose them: `prequal`'s p99 over the best classic strategy's",
        "(least connections, `p2c_ewma` or `orca_least_delay`), paired per repetition.",
        "",
    ]
    sweep = sweep_table()
    if sweep:
        lines += [sweep, ""]
    sampled = sampled_table(real)
    if sampled:
        lines += [
            "In the lab, a separate run after the main one (`prequal` alone with",
            "`pool: { prequal: { probes: 3 } }`, power-of-d sampling,",
            "added to each steady scenario; same durations, repetitions and seeds, so the",
            "pairs per repetition hold, but drift of the machine between the two runs does not cancel",
            "out):",
            "",
            sampled,
            "",
        ]
    lines += [
        "## A fast failure is not a fast answer (s6)",
        "",
        "`s6-shedding` before failures were priced into the latency estimates (the same scenario file",
        "run with the code of commit d830698: lab 3 repetitions of `p2c_ewma` and `least_connections`,",
        "model 5; `docs/bench/s6-before/`) and now (the runs on this page):",
        "",
        before_after(real, sim),
        "",
    ]
    lines += ["## The lab", ""]
    for res in real:
        for sr in res["scenarios"]:
            sc = sr["scenario"]
            lines += [
                f"### {sc['name']}",
                "",
                f"{sc['description']}. Offered {sr['target_rps']:.0f} req/s; "
                f"{sc['duration_s']:.0f} s measured after {sc['warmup_s']:.0f} s of warm-up, "
                f"{sr['reps']} repetitions.",
                "",
                table(sr, True),
                "",
                "Routing decisions per backend (median over repetitions):",
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
        "`nb-bench --scenario conf/scenarios --simulate` runs the same seven scenarios through the",
        "discrete-event model, which drives the proxy's own strategy code (crate `nb-strategy`) on",
        "a simulated clock, at full scenario durations, with the lab's arrivals and draws. Two",
        "references see what no proxy can: **greedy** sends each request where its expected",
        "completion is earliest, from every backend's true queue, speed and error rates (it ignores",
        "variance and prices queued work at the new request's class mean); **clairvoyant** also knows",
        "each request's own service time and the sizes of the work queued ahead of it. Both decide",
        "greedily, one request at a time, so neither is a ceiling for tail latency (a real strategy can",
        "beat them on a percentile); they mark what information could buy. `prequal@no_orca` and",
        "`orca_least_delay@no_orca` are the ORCA ablations: the same strategy with every backend's",
        "load report off.",
        "",
    ]
    for sr in sim["scenarios"]:
        sc = sr["scenario"]
        lines += [f"### {sc['name']} (model)", "", table(sr, False), ""]
    lines += [
        "## Model against lab",
        "",
        "`cargo test --release -p nb-lab --test lab_run the_model_agrees_with_the_lab_on_every_scenario`",
        "runs all seven scenarios (10 s after 5 s of warm-up, round robin, least connections, p2c_ewma,",
        "prequal) in",
        "both and checks that error rates agree within 2 points + 25 %, and, where both stay under",
        "0.5 % errors, that the lab's p99 lies within 0.8–1.5× the model's + 5 ms and that strategies the",
        "model separates by more than 1.25× come out in the same order. With one arrival schedule, the",
        "same per-request draws and a simulator that sleeps to within ~0.1 ms (it used to round every",
        "service time up to the next millisecond), the ratio lab/model was 1.00–1.19 in one run",
        "everywhere but s4's round robin (1.38); the largest error-rate gap was s2 round robin (19.2 %",
        "against 16.6 %). Those figures were taken before s6 and `prequal` joined the test; it passes",
        "with them.",
        "",
        "## Threats to validity",
        "",
        "What the lab still cannot show:",
        "",
    ]
    lines += [f"- {t}" for t in THREATS]
    lines += [""]
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
    page = os.path.join(ROOT, "docs", "benchmarks.md")
    # The learned strategy's section is written by scripts/bench_ml_report.py from its own
    # run (scripts/bench_ml.sh); keep it.
    kept = ""
    if os.path.exists(page):
        with open(page) as f:
            text = f.read()
        if ML_BEGIN in text and ML_END in text:
            kept = text[text.index(ML_BEGIN):text.index(ML_END) + len(ML_END)]
    if kept:
        lines += [kept, ""]
    with open(page, "w") as f:
        f.write("\n".join(lines))


ML_BEGIN = "<!-- the learned strategy: begin -->"
ML_END = "<!-- the learned strategy: end -->"


def res_dir(res):
    return {"s2-noisy-neighbour": "s2", "s5-cold-join": "s5"}.get(res["scenarios"][0]["scenario"]["name"], "steady")


if __name__ == "__main__":
    sys.exit(main())
