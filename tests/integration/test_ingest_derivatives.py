"""USD-M derivatives data end to end: the loopback exchange's forceOrder liquidations and REST open interest through
the real ingest stage (`surge stage ingest --source live`) onto ticks.v1, and the new features on those batches.

The capture (USD-M BTCUSDT 2023-04-04 23:58 -> 04-05 00:06, 8.5 min) plays at 20x with its recorded exchange times
(``--no-rebase-time``), so 5-minute windows exist; every 200th trade becomes a liquidation (at most one a second, as
Binance sends them) and ingest polls open interest every second of wall time (20 s of market time). Expectations are
the fake exchange's own record of what it sent and served, never counts that depend on timing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import market_pb2
from streams.features import definitions as d
from streams.features.core import compute_frame
from tests.integration.stack import StackProcesses, start_infrastructure
from tests.integration.test_ingest_live import HFT, run_session, session_batches, session_dead_letters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CAPTURES = ("usdm/btcusdt_20230404.dat.gz", "usdm/btcusdt_20230405.dat.gz")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcesses]:
    yield from start_infrastructure(tmp_path_factory.mktemp("ingest-derivatives"))


def test_liquidations_and_open_interest_reach_ticks_and_the_features(shared_data: Path,
                                                                     stack: StackProcesses) -> None:
    run = run_session(stack, "derivatives", "usdm", "BTCUSDT", [shared_data / HFT / c for c in CAPTURES],
                      "--liquidations-every", "200", "--no-rebase-time",
                      env={"SURGE_OPEN_INTEREST_INTERVAL_S": "1", "SURGE_STALE_INPUT_S": "0"})
    batches = [b for b in session_batches(stack, "usdm", run.session.started_us) if b.symbol == "BTCUSDT"]
    assert session_dead_letters(stack, run.session) == []
    # Every liquidation the exchange sent, once each, in order, field for field.
    sent = run.fake["liquidations"]
    assert len(sent) > 10
    got = [liq for b in batches for liq in b.liquidations]
    side = {"BUY": market_pb2.LIQUIDATION_SIDE_BUY, "SELL": market_pb2.LIQUIDATION_SIDE_SELL}
    assert [(liq.side, liq.price, liq.qty, liq.avg_price, liq.filled_qty, liq.trade_time_us, liq.exchange_us)
            for liq in got] == [
        (side[s["o"]["S"]], float(s["o"]["p"]), float(s["o"]["q"]), float(s["o"]["ap"]), float(s["o"]["z"]),
         s["o"]["T"] * 1000, s["E"] * 1000) for s in sent]
    # Open interest: each distinct sample served (by time; the first answer for a time wins, later ones with the
    # same time are duplicates), on the symbol's batches in order; before the market started its time was 0.
    served: dict[int, float] = {}
    for sample in run.fake["open_interest_served"]:
        if sample["time"] > 0 and sample["time"] not in served:
            served[sample["time"]] = float(sample["openInterest"])
    samples = [(oi.exchange_us // 1000, oi.open_interest) for b in batches for oi in b.open_interest]
    assert len(samples) > 10 and samples == sorted(served.items())
    assert len({value for _, value in samples}) > 1  # it changes as the market plays
    # The features of these very batches (the batch driver: the same kernel as the stage) become finite.
    frame = compute_frame(batches)
    last = frame.iloc[-1]
    for name in ("liq_notional_1m", "liq_count_5m", "liq_imbalance_5m", "oi_change_5m"):
        assert math.isfinite(last[name]), name
    t = int(last["exchange_us"]) - round(last["feature_age_medium_s"] * 1e6)  # when the medium tier was evaluated
    assert last["liq_count_5m"] == sum(1 for liq in got if t - 300_000_000 < liq.trade_time_us <= t)
    assert math.isnan(last["oi_change_1h"])  # 8.5 minutes of market: no sample an hour back
    assert set(d.FEATURE_NAMES) <= set(frame.columns)
