"""Soak benchmark: `surge run` at its default load for a while, sampled from the stages' /metrics.

    python bench/soak.py --duration 3600            # `make soak` (SOAK_S=600 for a 10-minute run)

Every ``--sample-s`` it reads decision's exchange->signal histogram (per-minute p50/p99 from bucket deltas,
across stage restarts), every stage's event-time lag, the CPU and memory of each of `surge run`'s processes, and
the counters of ingest and decision. At the end it stops `surge run` with Ctrl-C, which stops intake and lets
every consumer catch up first, and reconciles from the run's own ClickHouse folder: the trades every ingest
process logged as accepted when it stopped (exact) against the distinct trade ids stored, and the p99 of every
stored prediction in the first and last windows (10 minutes, or half of a shorter run). Writes JSON (``--out``)
and a PNG of p99 and lag per minute with the broker recycles marked (``--png``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "features", "infer", "decision", "sink", "outcomes")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def metrics_base() -> int:
    for base in range(21101, 29000, 17):
        if all(port_free(base + i) for i in range(len(STAGES))):
            return base
    raise RuntimeError("no free range for the stages' metrics ports")


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return []
    out = []
    for name, labels, value in SAMPLE.findall(text):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        out.append((name, parsed, float(value)))
    return out


@dataclass
class Cumulative:
    """A counter summed across process restarts: a drop means a new process, whose value is all new."""

    total: float = 0.0
    last: float | None = None

    def update(self, value: float) -> float:
        delta = value if self.last is None or value < self.last else value - self.last
        if self.last is None:
            delta = value
        self.last = value
        self.total += delta
        return delta


@dataclass
class Minute:
    buckets: dict[float, float] = field(default_factory=dict)
    lag: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used this minute, per process kind
    rss_mb: dict[str, float] = field(default_factory=dict)  # the largest resident size seen, per process kind
    load_1m: float = 0.0


def process_kind(cmdline: list[str]) -> str:
    """What one of `surge run`'s processes is, from its command line."""
    joined = " ".join(cmdline)
    if "tansu" in joined:
        return "broker"
    if "redis-server" in joined:
        return "redis"
    for kind in ("warehouse", "gateway", "jobs"):
        if f"services.cli {kind}" in joined:
            return kind
    match = re.search(r"services\.cli stage (\w+)", joined)
    return match.group(1) if match else "supervisor" if "services.cli run" in joined else "other"


@dataclass
class ProcessWatch:
    """CPU seconds and resident size of `surge run` and its children, per kind, across restarts (by pid)."""

    root_pid: int
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def sample(self, minute: Minute) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                with proc.oneshot():
                    kind = process_kind(proc.cmdline())
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            used = times.user + times.system
            minute.cpu_s[kind] = minute.cpu_s.get(kind, 0.0) + used - self.cpu_by_pid.get(proc.pid, 0.0)
            self.cpu_by_pid[proc.pid] = used
            minute.rss_mb[kind] = max(minute.rss_mb.get(kind, 0.0), rss)
        minute.load_1m = max(minute.load_1m, os.getloadavg()[0])


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """histogram_quantile over cumulative bucket counts (upper bound -> count), linear within a bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            width = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width else 0.0)
        prev_bound, prev_count = bound, count
    return prev_bound


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--sample-s", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "soak.json")
    ap.add_argument("--png", type=Path, default=REPO_ROOT / "bench" / "results" / "soak.png")
    ap.add_argument("--keep", action="store_true", help="keep the run's data folder and logs")
    ap.add_argument("--reanalyse", type=Path, help="recompute the stored-row part of --out from a kept run folder")
    ap.add_argument("--set", action="append", default=[], metavar="SURGE_X=V",
                    help="a setting for the run (repeatable), e.g. --set SURGE_SIM_EVENTS_PER_S=1000")
    ap.add_argument("--model", default="simulator",
                    help="shipped model to serve (default: the simulator's, trained on the simulator's market; the "
                         "default btcusdt-klines model rarely acts on it, and a soak needs signals to time "
                         "exchange->signal); 'default' keeps surge run's own")
    args = ap.parse_args(argv)
    if args.reanalyse is not None:
        return reanalyse(args)

    root = Path(tempfile.mkdtemp(prefix="surge-soak-"))
    base = metrics_base()
    token = secrets.token_urlsafe(32)
    ports = {"SURGE_BROKER_PORT": free_port(), "SURGE_WAREHOUSE_PORT": free_port(), "SURGE_REDIS_PORT": free_port(),
             "SURGE_GATEWAY_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"SURGE_METRICS_BASE_PORT": str(base), "SURGE_DATA_DIR": str(root / "data"), "SURGE_SOURCE": "sim",
                "SURGE_WAREHOUSE_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("SURGE_"):
            ap.error(f"--set wants SURGE_NAME=VALUE, got {item!r}")
        env[key] = value
    if args.model != "default":
        from streams.infer.artifacts import shipped

        env["SURGE_MODEL_DIR"] = str(shipped(args.model))
    log_path = root / "surge-run.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    port = {stage: base + i for i, stage in enumerate(STAGES)}
    print(f"soak: surge run (pid {proc.pid}) in {root}, {args.duration:.0f} s", flush=True)
    try:
        deadline = time.monotonic() + 240
        while "surge is running" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("surge run did not start:\n" + log_path.read_text(errors="replace")[-3000:])
            time.sleep(1)
        result = soak(args, proc, log_path, port)
        result["config"]["model"] = args.model  # a shipped model's name, not a machine path
        result["config"]["settings"] = dict(item.partition("=")[::2] for item in args.set)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.png)
    print(json.dumps(result["summary"], indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


def reanalyse(args: argparse.Namespace) -> int:
    """Redo the warehouse part of a finished run from its kept chdb folder (the run's processes are gone)."""
    old = json.loads(args.out.read_text())
    stored = reconcile_folder(args.reanalyse)
    s = old["summary"]
    result = build_result(s["duration_s"], old["config"]["sample_s"], old["minutes"], old["recycle_events"],
                          s["drains"], s["trades_accepted_lower_bound"], s["signals_published"], stored)
    result["config"] = {**old["config"], **result["config"]}
    result["notes"].append("the stored-row part was recomputed after the run from its kept ClickHouse folder "
                           "(bench/soak.py --reanalyse)")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.png)
    print(json.dumps(result["summary"], indent=2))
    return 0


def soak(args: argparse.Namespace, proc: subprocess.Popen[bytes], log_path: Path,
         port: dict[str, int]) -> dict[str, Any]:
    started = time.monotonic()
    wall_start = time.time()
    minutes: dict[int, Minute] = {}
    hist: dict[float, Cumulative] = {}
    trades, signals_out = Cumulative(), Cumulative()
    processes = ProcessWatch(proc.pid)
    while time.monotonic() - started < args.duration and proc.poll() is None:
        t0 = time.monotonic()
        minute = minutes.setdefault(int((t0 - started) // 60), Minute())
        sample(port, minute, hist, trades, signals_out)
        processes.sample(minute)
        time.sleep(max(0.0, args.sample_s - (time.monotonic() - t0)))
    # The end: a last sample, then Ctrl-C. `surge run` stops intake, lets every consumer catch up and stops; each
    # ingest process has logged its exact accepted count by then, and the warehouse folder is free to open here.
    final_minute = minutes.setdefault(int((time.monotonic() - started) // 60), Minute())
    sample(port, final_minute, hist, trades, signals_out)
    proc.send_signal(signal.SIGINT)
    proc.wait(90)
    stored = reconcile_folder(log_path.parent)
    run_log = log_path.read_text(errors="replace")
    recycles = [{"at_s": at_s(line, wall_start), "line": line.split("RECYCLE ", 1)[1][:200]}
                for line in run_log.splitlines() if "RECYCLE broker" in line]
    drains = [line.split("] ", 1)[-1][:160] for line in run_log.splitlines() if "DRAIN" in line]
    series: list[dict[str, Any]] = []
    for m in sorted(minutes):
        mm = minutes[m]
        p99 = quantile(mm.buckets, 0.99)
        p50 = quantile(mm.buckets, 0.50)
        series.append({"minute": m, "signals": mm.buckets.get(float("inf"), 0.0),
                       "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                       "p99_ms": None if p99 is None else round(p99 * 1000, 1),
                       "lag_max_s": {s: round(max(v), 2) for s, v in mm.lag.items() if v},
                       "cpu_cores": {k: round(v / 60, 3) for k, v in sorted(mm.cpu_s.items())},
                       "rss_mb": {k: round(v, 1) for k, v in sorted(mm.rss_mb.items())},
                       "load_1m": round(mm.load_1m, 2)})
    return build_result(args.duration, args.sample_s, series, recycles, drains, trades.total, signals_out.total,
                        stored)


def exact_accepted(root: Path) -> tuple[int | None, int]:
    """Trades ingest accepted, exactly: every ingest process logs its count when it stops (a recycle or the
    shutdown). (None, n) if one of the n ingest processes left no count (it died instead of stopping)."""
    ingest_log = root / "data" / "logs" / "ingest.log"
    counts = [int(n) for n in re.findall(r"(\d+) trades accepted", ingest_log.read_text(errors="replace"))]
    starts = len(re.findall(r"started ingest \(pid \d+\)", (root / "surge-run.log").read_text(errors="replace")))
    return (sum(counts) if starts == len(counts) else None), starts


def reconcile_folder(root: Path) -> dict[str, Any]:
    """After `surge run` has exited: the exact accepted count from the logs, and the stored rows from the run's
    own chdb folder (one process may open it at a time, so this waits for the run to be gone)."""
    from streams.storage.warehouse import open_warehouse

    accepted, processes = exact_accepted(root)
    stored = reconcile_with(open_warehouse(f"chdb://{root.resolve() / 'data' / 'clickhouse'}", "surge"))
    return {"trades_accepted_exact": accepted, "ingest_processes": processes, **stored}


def build_result(duration: float, sample_s: float, series: list[dict[str, Any]], recycles: list[dict[str, Any]],
                 drains: list[str], trades_total: float, signals_total: float,
                 stored: dict[str, Any]) -> dict[str, Any]:
    hop = "decision (exchange->signal, /metrics)"
    p99s = [(s["minute"], s["p99_ms"]) for s in series if s["p99_ms"] is not None]
    if not p99s:  # decision published nothing: judge the last hop that did, from the stored rows
        hop = "infer (exchange->prediction, stored predictions)"
        p99s = [(m["minute"], m["p99_ms"]) for m in stored["predictions_latency_per_minute"]]
    last_minutes = max((m for m, _ in p99s), default=0)
    window = max(1, min(10, (last_minutes + 1) // 2))  # 10 minutes, or half of a shorter run
    first = [v for m, v in p99s if m < window]
    last = [v for m, v in p99s if m > last_minutes - window]
    first_p99 = sorted(first)[len(first) // 2] if first else None
    last_p99 = sorted(last)[len(last) // 2] if last else None
    judged_first, judged_last = first_p99, last_p99
    if hop.startswith("infer") and "predictions_p99_ms_first_window" in stored:
        # The p99 of every stored prediction in each window, rather than a median of per-minute p99s.
        judged_first, judged_last = stored["predictions_p99_ms_first_window"], stored["predictions_p99_ms_last_window"]
    summary = {
        "duration_s": duration,
        "recycles": len(recycles),
        "p99_judged_on": hop,
        "drains": drains,
        "p99_window_min": window,
        "p99_ms_median_first_window": first_p99,
        "p99_ms_median_last_window": last_p99,
        "p99_stable_within_1_5x": (None if not judged_first or not judged_last
                                   else judged_last <= 1.5 * judged_first),
        "trades_accepted_lower_bound": int(trades_total),
        **{k: v for k, v in stored.items() if not k.endswith("_per_minute")},
        "signals_published": int(signals_total),
        "trades_missing_vs_accepted_exact": (None if stored["trades_accepted_exact"] is None
                                             else stored["trades_accepted_exact"] - stored["trades_stored_distinct"]),
        "signals_missing_vs_published": int(signals_total) - stored["signals_stored_distinct"],
    }
    return {"config": {"source": "sim", "sim_events_per_s": "default", "sample_s": sample_s},
            "summary": summary, "minutes": series, "recycle_events": recycles,
            "stored_latency_per_minute": {k: v for k, v in stored.items() if k.endswith("_per_minute")},
            "notes": ["trades_accepted_exact is the sum of the counts each ingest process logged when it stopped (at a"
                      " recycle or at the final Ctrl-C, which drains); the stored counts were read from the run's"
                      " chdb folder after `surge run` exited. trades_accepted_lower_bound and signals_published"
                      " are counters sampled every sample_s and summed across restarts (lower bounds)."]}


def at_s(line: str, wall_start: float) -> float | None:
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
    if not match:
        return None
    return round(time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) - wall_start, 1)


def last_pid(log_path: Path, name: str) -> int | None:
    found = re.findall(rf"started {name} \(pid (\d+)\)", log_path.read_text(errors="replace"))
    return int(found[-1]) if found else None


def sample(port: dict[str, int], minute: Minute, hist: dict[float, Cumulative], trades: Cumulative,
           signals_out: Cumulative, *, skip_ingest: bool = False) -> None:
    for stage, p in port.items():
        if skip_ingest and stage == "ingest":
            continue
        rows = scrape(p)
        for name, _labels, value in rows:
            if name == "surge_event_time_lag_seconds":
                minute.lag.setdefault(stage, []).append(value)
        if stage == "ingest" and rows:
            trades.update(sum(v for n, _, v in rows if n == "surge_ingest_trades_total"))
        if stage == "decision" and rows:
            signals_out.update(sum(v for n, labels, v in rows
                                   if n == "surge_events_out_total" and labels.get("topic") == "signals.v1"))
            for name, labels, value in rows:
                if name == "surge_e2e_latency_seconds_bucket":
                    le = float(labels["le"].replace("+Inf", "inf"))
                    delta = hist.setdefault(le, Cumulative()).update(value)
                    minute.buckets[le] = minute.buckets.get(le, 0.0) + delta


STORED_MINUTES = """
SELECT toUInt32(intDiv(exchange_us - (SELECT min(exchange_us) FROM surge.{table}), 60000000)) AS minute,
       count() AS n, quantile(0.5)(latency_ms) AS p50_ms, quantile(0.99)(latency_ms) AS p99_ms
FROM surge.{table} FINAL GROUP BY minute ORDER BY minute
"""


WINDOW_P99 = """
SELECT quantile(0.99)(latency_ms) AS p99 FROM surge.predictions FINAL
WHERE intDiv(exchange_us - (SELECT min(exchange_us) FROM surge.predictions), 60000000) >= {lo}
  AND intDiv(exchange_us - (SELECT min(exchange_us) FROM surge.predictions), 60000000) < {hi}
"""


def reconcile_with(wh: Any) -> dict[str, Any]:
    """Counts from the warehouse, and per-minute latency of what was stored: exchange->prediction (infer) and
    exchange->signal (decision), from the rows' own stamps, so it exists even when decision emitted nothing."""
    try:
        def one(sql: str) -> int:
            return int(next(iter(wh.query(sql)[0].values())))

        out: dict[str, Any] = {
            "trades_stored_rows": one("SELECT count() AS n FROM surge.trades"),
            "trades_stored_distinct": one("SELECT count() AS n FROM surge.trades FINAL"),
            "trades_stored_distinct_ids": one("SELECT uniqExact(symbol, venue, trade_id) AS n FROM surge.trades"),
            "signals_stored_rows": one("SELECT count() AS n FROM surge.signals"),
            "signals_stored_distinct": one("SELECT count() AS n FROM surge.signals FINAL"),
            "outcomes_stored_distinct": one("SELECT count() AS n FROM surge.outcomes FINAL"),
            "predictions_stored_distinct": one("SELECT count() AS n FROM surge.predictions FINAL"),
        }
        minutes = one("SELECT toUInt32(intDiv(max(exchange_us) - min(exchange_us), 60000000)) AS n "
                      "FROM surge.predictions")
        window = max(1, min(10, (minutes + 1) // 2))
        for name, lo, hi in (("first", 0, window), ("last", minutes + 1 - window, minutes + 1)):
            out[f"predictions_p99_ms_{name}_window"] = round(float(next(iter(wh.query(WINDOW_P99.format(
                lo=lo, hi=hi))[0].values()))), 1)
        for table in ("predictions", "signals"):
            out[f"{table}_latency_per_minute"] = [
                {"minute": int(r["minute"]), "n": int(r["n"]), "p50_ms": round(float(r["p50_ms"]), 1),
                 "p99_ms": round(float(r["p99_ms"]), 1)} for r in wh.query(STORED_MINUTES.format(table=table))]
    finally:
        wh.close()
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = result["minutes"]
    xs = [m["minute"] for m in minutes]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot(xs, [m["p99_ms"] for m in minutes], label="p99 exchange->signal", marker=".")
    stored = result.get("stored_latency_per_minute", {}).get("predictions_latency_per_minute", [])
    if stored:
        ax1.plot([m["minute"] for m in stored], [m["p99_ms"] for m in stored], marker=".",
                 label="p99 exchange->prediction (stored)")
    ax1.axhline(800, color="red", linestyle=":", label="SLO 800 ms")
    ax1.set_yscale("log")
    ax1.set_ylabel("exchange->signal ms")
    ax1.legend(loc="upper left")
    for stage in ("features", "infer", "decision", "sink"):
        ax2.plot(xs, [m["lag_max_s"].get(stage) for m in minutes], label=stage, marker=".")
    ax2.set_ylabel("max event-time lag s")
    ax2.set_xlabel("minute")
    ax2.legend(loc="upper left")
    for r in result["recycle_events"]:
        if r["at_s"] is not None:
            for ax in (ax1, ax2):
                ax.axvline(r["at_s"] / 60, color="grey", linestyle="--", linewidth=0.8)
    s = result["summary"]
    fig.suptitle(f"surge run soak: {s['duration_s'] / 60:.0f} min, {s['recycles']} broker recycle(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
