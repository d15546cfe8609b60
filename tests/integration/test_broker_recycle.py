"""The embedded broker's scheduled drain-then-recycle under `surge run`: every trade ingest accepted is stored
once, across two recycles and the shutdown, and the features stage resumes its windows and the simulator its
prices each time."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.stack import kill_run, stack_env, wait_for

pytestmark = pytest.mark.integration


def test_two_scheduled_recycles_and_a_shutdown_lose_no_accepted_trade(tmp_path: Path) -> None:
    """Tried: 300 simulated events/s on two symbols, the broker recycled every 10 s (each recycle stops ingest,
    lets every consumer catch up, restarts the broker and the stages), then Ctrl-C 3 s after the second recycle.
    Each ingest process logs the trades it accepted when it stops; their sum must equal the distinct trade ids
    in ClickHouse, with the warehouse read after `surge run` has exited (chdb allows one process per folder)."""
    env = stack_env(tmp_path, SURGE_SOURCE="sim", SURGE_SIM_EVENTS_PER_S="300", SURGE_SYMBOLS="BTCUSDT,ETHUSDT",
                    SURGE_BROKER_RECYCLE_EVERY_S="10", SURGE_BROKER_RECYCLE_LAG_S="0")
    run_log = tmp_path / "surge-run.log"
    logs = tmp_path / "data" / "logs"

    def context() -> str:
        # The supervisor's and ingest's logs whole (they are short), then the tails of the others.
        whole = [run_log, logs / "ingest.log"]
        tails = [f"--- {p.name} ---\n{p.read_text(errors='replace')[-800:]}" for p in sorted(logs.glob("*.log"))
                 if p not in whole]
        return "\n".join([f"--- {p.name} ---\n{p.read_text(errors='replace')}" for p in whole if p.exists()]
                         + tails)

    with run_log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run"], env=env, cwd=REPO_ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "RECYCLED broker #2" in run_log.read_text(errors="replace"), 300,
                 "two scheduled recycles", interval_s=1.0, context=context)
        time.sleep(3)  # Ctrl-C mid-session, with trades of the third ingest process in flight
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, context()
    finally:
        kill_run(proc)

    supervisor = run_log.read_text(errors="replace")
    assert len(re.findall(r"DRAINED in [0-9.]+s", supervisor)) >= 3, context()  # two recycles and the shutdown
    starts = len(re.findall(r"started ingest \(pid \d+\)", supervisor))
    accepted = [int(n) for n in re.findall(r"(\d+) trades accepted", (logs / "ingest.log").read_text())]
    assert len(accepted) == starts >= 3, context()  # every ingest process stopped cleanly and counted
    resumed = re.findall(r"resumed the windows of (\d+) symbol", (logs / "features.log").read_text())
    assert resumed[:2] == ["2", "2"], context()
    prices = re.findall(r"resumed the simulated prices of (\d+) symbol", (logs / "ingest.log").read_text())
    assert prices[:2] == ["2", "2"], context()  # the second and third sessions carry on from the last mids

    from streams.storage.warehouse import open_warehouse

    wh = open_warehouse(f"chdb://{tmp_path / 'data' / 'clickhouse'}", "surge")
    try:
        [row] = wh.query("SELECT count() AS n, uniqExact(symbol, venue, trade_id) AS ids FROM surge.trades FINAL")
    finally:
        wh.close()
    assert (int(row["n"]), int(row["ids"])) == (sum(accepted), sum(accepted))
