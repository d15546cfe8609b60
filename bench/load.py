"""Load harness: ramp the simulator's raw events/s until the pipeline saturates on this machine.

    python bench/load.py [--rates 2000,5000,...] [--measure-s 20]      # `make bench-load`

Each rate runs on a fresh embedded stack (Tansu slows as it fills, so a shared broker would blame the later
rates for the earlier ones): broker, warehouse service and redis, then every stage as its own process, ingest
last with the simulator at that rate. After a warm-up, each stage's /metrics is read at the start and end of
the measured window (records in per second, exchange->output p50/p95/p99 from histogram deltas) and its
event-time lag every second. A rate is saturated when ingest achieves under 90 % of it or a consumer ends
the window more than 2 s behind; the ramp stops at the first saturated rate. The bottleneck is the first
stage, in pipeline order, that is behind (everything upstream of it keeps up), or ingest itself when it cannot
reach the rate. Writes ``bench/results/load.json`` and ``load.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.soak import quantile, scrape  # noqa: E402
from tests.integration.stack import StackProcesses, start_infrastructure  # noqa: E402

STAGES = ("ingest", "features", "infer", "decision", "sink", "outcomes")
CONSUMERS = STAGES[1:]
SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,AVAXUSDT"
LAG_BEHIND_S = 2.0


@contextlib.contextmanager
def stack(root: Path) -> Iterator[StackProcesses]:
    # One partition per topic, as `surge run` creates them on the embedded broker (README, embedded broker caveats).
    gen = start_infrastructure(root, SURGE_SOURCE="sim", SURGE_SYMBOLS=SYMBOLS, SURGE_PARTITIONS="1")
    handle = next(gen)
    try:
        yield handle
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


def snapshot(handle: StackProcesses) -> dict[str, dict[str, Any]]:
    s = handle.settings
    out: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        rows = scrape(s.stage_port(stage))
        buckets: dict[float, float] = {}
        for name, labels, value in rows:
            if name == "surge_e2e_latency_seconds_bucket":
                le = float(labels["le"].replace("+Inf", "inf"))
                buckets[le] = buckets.get(le, 0.0) + value
        out[stage] = {
            "events_in": sum(v for n, _, v in rows if n == "surge_events_in_total"),
            "lag": max((v for n, _, v in rows if n == "surge_event_time_lag_seconds"), default=None),
            "buckets": buckets,
        }
    return out


def measure(root: Path, rate: int, warmup_s: float, measure_s: float) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with stack(root) as handle:
        for stage in ("sink", "outcomes", "decision", "infer", "features"):
            handle.start_stage(stage)
        for stage in ("sink", "outcomes", "decision", "infer", "features"):
            handle.wait_stage_ready(stage)
        handle.start_stage("ingest", {"SURGE_SIM_EVENTS_PER_S": str(rate)})
        time.sleep(warmup_s)
        before = snapshot(handle)
        lags: dict[str, list[float]] = {s: [] for s in STAGES}
        started = time.monotonic()
        while time.monotonic() - started < measure_s:
            time.sleep(1.0)
            for stage, snap in snapshot(handle).items():
                if snap["lag"] is not None:
                    lags[stage].append(snap["lag"])
        after = snapshot(handle)
        elapsed = time.monotonic() - started
    stages: dict[str, Any] = {}
    for stage in STAGES:
        delta = {le: after[stage]["buckets"].get(le, 0.0) - before[stage]["buckets"].get(le, 0.0)
                 for le in after[stage]["buckets"]}
        q = {f"p{int(p * 100)}_ms": (None if (v := quantile(delta, p)) is None else round(v * 1000, 1))
             for p in (0.5, 0.95, 0.99)}
        stages[stage] = {
            "in_per_s": round((after[stage]["events_in"] - before[stage]["events_in"]) / elapsed, 1),
            "lag_end_s": round(lags[stage][-1], 2) if lags[stage] else None,
            "lag_max_s": round(max(lags[stage]), 2) if lags[stage] else None,
            **q,
        }
    achieved = stages["ingest"]["in_per_s"]
    behind = [s for s in CONSUMERS if (stages[s]["lag_end_s"] or 0.0) > LAG_BEHIND_S]
    ingest_short = achieved < 0.9 * rate
    bottleneck = "ingest" if ingest_short and not behind else (behind[0] if behind else None)
    # The machine's 1-minute load average around the window: on a shared box, other work skews every number.
    return {"target_events_per_s": rate, "achieved_events_per_s": achieved, "saturated": ingest_short or bool(behind),
            "bottleneck": bottleneck, "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "stages": stages}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r["target_events_per_s"] for r in rows]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.5))
    a1.plot(rates, rates, linestyle=":", color="grey", label="target")
    a1.plot(rates, [r["achieved_events_per_s"] for r in rows], marker="o", label="ingest raw events/s")
    a1.set_xlabel("target raw events/s")
    a1.set_ylabel("achieved")
    a1.legend()
    for stage in CONSUMERS:
        a2.plot(rates, [r["stages"][stage]["lag_end_s"] for r in rows], marker="o", label=stage)
        a3.plot(rates, [r["stages"][stage]["p99_ms"] for r in rows], marker="o", label=stage)
    a2.set_xlabel("target raw events/s")
    a2.set_ylabel("event-time lag at window end, s")
    a2.legend()
    a3.set_xlabel("target raw events/s")
    a3.set_ylabel("exchange->output p99 ms")
    a3.legend()
    for ax in (a1, a2, a3):
        ax.set_xscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="2000,5000,10000,20000,40000,80000")
    ap.add_argument("--warmup-s", type=float, default=8.0)
    ap.add_argument("--measure-s", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "load.json")
    ap.add_argument("--png", type=Path, default=REPO_ROOT / "bench" / "results" / "load.png")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="surge-load-") as tmp:
        for rate in (int(r) for r in args.rates.split(",")):
            row = measure(Path(tmp) / f"rate-{rate}", rate, args.warmup_s, args.measure_s)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("target_events_per_s", "achieved_events_per_s", "saturated",
                                                  "bottleneck")}), flush=True)
            if row["saturated"]:
                break
    saturated = next((r for r in rows if r["saturated"]), None)
    doc = {"symbols": SYMBOLS, "warmup_s": args.warmup_s, "measure_s": args.measure_s, "rates": rows,
           "saturates_at_events_per_s": saturated["target_events_per_s"] if saturated else None,
           "bottleneck": saturated["bottleneck"] if saturated else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
