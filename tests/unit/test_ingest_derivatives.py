"""USD-M derivatives data in ingest: forceOrder liquidations and REST open interest, from Binance's documented
sample payloads (no capture records them) to TickBatches and dead letters, and the open-interest poll schedule."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from schemas import common_pb2, market_pb2
from streams.ingest import core
from streams.ingest.config import IngestConfig
from streams.ingest.events import LiquidationEvent, OpenInterestEvent, Rejected
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings
from streams.venues.binance import codec
from streams.venues.binance.codec import CODEC
from streams.venues.binance.open_interest import HEADROOM_SHARE, PLAN_BUDGET_SHARE, OpenInterestSchedule
from streams.venues.binance.rest import BinanceRest, WeightBudget
from streams.venues.binance.spec import SPOT, USDM

pytestmark = pytest.mark.unit

# Binance's documented samples, verbatim (see the parsers' docstrings).
FORCE_ORDER = (b'{"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC",'
               b'"q":"0.014","p":"9910","ap":"9910","X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}')
OPEN_INTEREST = b'{"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}'
LOCAL = 1568014460900_000


def force_order(**changes: object) -> bytes:
    data = orjson.loads(FORCE_ORDER)
    order = dict(data["o"])
    for key, value in changes.items():
        if key.startswith("top_"):
            continue
        if value is None:
            order.pop(key, None)
        else:
            order[key] = value
    data["o"] = order
    data.update({key[4:]: value for key, value in changes.items() if key.startswith("top_")})
    return orjson.dumps(data)


def test_force_order_golden() -> None:
    event = CODEC.decode("", FORCE_ORDER, LOCAL)  # a raw /ws frame: the symbol is inside the order
    assert type(event) is LiquidationEvent
    assert (event.symbol, event.local_us, event.sent_us) == ("BTCUSDT", LOCAL, 1568014460893_000)
    assert event.liquidation == market_pb2.Liquidation(
        side=market_pb2.LIQUIDATION_SIDE_SELL, price=9910.0, qty=0.014, avg_price=9910.0, filled_qty=0.014,
        trade_time_us=1568014460893_000, exchange_us=1568014460893_000, ingest_us=LOCAL)
    combined = CODEC.decode("", b'{"stream":"btcusdt@forceOrder","data":' + FORCE_ORDER + b"}", LOCAL)
    assert type(combined) is LiquidationEvent and combined.liquidation == event.liquidation
    buy = codec.parse_force_order(orjson.loads(force_order(S="BUY", ap="0", z="0")), LOCAL)
    assert (buy.side, buy.avg_price, buy.filled_qty) == (market_pb2.LIQUIDATION_SIDE_BUY, 0.0, 0.0)


@pytest.mark.parametrize(("frame", "error_type", "reason"), [
    (force_order(p=None), "missing_field", "field 'p' missing"),
    (force_order(T=None), "missing_field", "field 'T' missing"),
    (force_order(top_E="1568014460893"), "missing_field", "field 'E' is not an integer: '1568014460893'"),
    (force_order(p="abc"), "invalid_price", "liquidation price is not numeric: 'abc'"),
    (force_order(p="0"), "invalid_price", "liquidation price is not positive and finite: '0'"),
    (force_order(ap="NaN"), "invalid_price", "liquidation average price is negative or not finite: 'NaN'"),
    (force_order(q="-1"), "invalid_size", "liquidation qty is negative or not finite: '-1'"),
    (force_order(S="HOLD"), "invalid_field", "liquidation side is not BUY or SELL: 'HOLD'"),
    (force_order(top_o="x"), "missing_field", "field 'o' is not an object: 'x'"),
    (force_order(top_e="forceOrders"), "unknown_event_type", "unknown event type 'forceOrders'"),
])
def test_bad_force_orders_are_rejected_with_a_reason(frame: bytes, error_type: str, reason: str) -> None:
    event = CODEC.decode("btcusdt@forceOrder", frame, LOCAL)
    assert type(event) is Rejected
    assert (event.symbol, event.error_type, event.reason, event.depth) == ("BTCUSDT", error_type, reason, False)


def test_open_interest_golden() -> None:
    symbol, sample = codec.parse_open_interest(orjson.loads(OPEN_INTEREST), LOCAL)
    assert symbol == "BTCUSDT"
    assert sample == market_pb2.OpenInterest(open_interest=10659.509, exchange_us=1589437530011_000, ingest_us=LOCAL)
    assert CODEC.decode_open_interest("BTCUSDT", OPEN_INTEREST, LOCAL) == OpenInterestEvent("BTCUSDT", sample, LOCAL)


@pytest.mark.parametrize(("raw", "error_type", "reason"), [
    (b'{"openInterest":"abc","symbol":"BTCUSDT","time":1589437530011}', "invalid_size",
     "open interest: open interest is not numeric: 'abc'"),
    (b'{"openInterest":"-1","symbol":"BTCUSDT","time":1589437530011}', "invalid_size",
     "open interest: open interest is negative or not finite: '-1'"),
    (b'{"openInterest":"10659.509","symbol":"BTCUSDT"}', "missing_field", "open interest: field 'time' missing"),
    (b'{"symbol":"BTCUSDT","time":1589437530011}', "missing_field", "open interest: field 'openInterest' missing"),
    (b'[1,2]', "malformed_json", "open interest: expected a JSON object, got list"),
    (b'{"openInterest":"10659.509","symbol":"ETHUSDT","time":1589437530011}', "symbol_mismatch",
     "open interest of ETHUSDT in the answer for BTCUSDT"),
])
def test_bad_open_interest_is_rejected_with_a_reason(raw: bytes, error_type: str, reason: str) -> None:
    event = CODEC.decode_open_interest("BTCUSDT", raw, LOCAL)
    assert type(event) is Rejected
    assert (event.symbol, event.error_type, event.reason) == ("BTCUSDT", error_type, reason)


def usdm_state() -> core.IngestState:
    return IngestConfig.from_settings(Settings.defaults()).new_state(common_pb2.BINANCE_USDM, futures=True)


def batches(out: core.IngestOutputs) -> list[market_pb2.TickBatch]:
    return [e.value for e in out.emits if isinstance(e.value, market_pb2.TickBatch)]


def test_liquidations_and_open_interest_ride_on_the_tick_batches() -> None:
    state, clock = usdm_state(), ManualClock(LOCAL)
    out = core.process([("btcusdt@forceOrder", FORCE_ORDER, LOCAL),
                        ("btcusdt@forceOrder", FORCE_ORDER, LOCAL + 5),  # the same event again: a duplicate
                        ("btcusdt@forceOrder", force_order(p="abc"), LOCAL + 6)], state, clock)
    assert [(d.error_type, d.reason, d.symbol, d.raw_bytes) for d in out.dead_letters] == [
        ("invalid_price", "liquidation price is not numeric: 'abc'", "BTCUSDT", force_order(p="abc"))]
    assert core.apply_open_interest(state, "BTCUSDT", OPEN_INTEREST, clock, LOCAL + 7).dead_letters == []
    assert core.apply_open_interest(state, "BTCUSDT", OPEN_INTEREST, clock).emits == []  # same time: duplicate
    bad = core.apply_open_interest(state, "BTCUSDT", b"{}", clock)
    assert [(d.error_type, d.reason) for d in bad.dead_letters] == [
        ("missing_field", "open interest: field 'symbol' missing")]
    clock.advance_us(20_000)
    (batch,) = batches(core.flush(state, clock))
    assert batch.symbol == "BTCUSDT" and list(batch.events) == []  # no book synced yet, no other event
    assert [liq.price for liq in batch.liquidations] == [9910.0]
    assert [(oi.open_interest, oi.exchange_us) for oi in batch.open_interest] == [(10659.509, 1589437530011_000)]
    assert batch.ts.exchange_us == 1589437530011_000 and common_pb2.BOOK_RESYNCING in batch.quality_flags
    st = state.symbols["BTCUSDT"]
    assert (st.liquidations, st.open_interest_samples, st.duplicates) == (1, 1, 2)
    # A batch without them is what it always was: the fields are simply absent on the wire.
    out = core.process([("btcusdt@trade", b'{"e":"trade","E":1568014461000,"T":1568014461000,"s":"BTCUSDT",'
                                          b'"t":1,"p":"9910","q":"1","m":true}', LOCAL)], state, clock)
    clock.advance_us(20_000)
    (plain,) = batches(core.flush(state, clock))
    assert not plain.liquidations and not plain.open_interest
    assert plain.ListFields()[-1][0].name == "quality_flags"


def test_a_symbol_no_longer_followed_ignores_its_open_interest() -> None:
    state, clock = usdm_state(), ManualClock(LOCAL)
    state.symbol_state("ETHUSDT")
    state.fixed_universe = True
    assert core.apply_open_interest(state, "BTCUSDT", OPEN_INTEREST, clock).emits == []
    assert state.ignored_events == 1 and "BTCUSDT" not in state.symbols


def test_only_usdm_has_force_orders_and_open_interest() -> None:
    assert [k.name for k in USDM.streams if k.route == "/market"] == ["trade", "markPrice", "forceOrder"]
    assert "forceOrder" not in [k.name for k in SPOT.streams]
    assert (USDM.open_interest_path, USDM.open_interest_weight, SPOT.open_interest_weight) == (
        "/fapi/v1/openInterest", 1, 0)


# --- the poll schedule ---------------------------------------------------------------------------------------------

S = 1_000_000


def test_polls_are_staggered_over_the_interval() -> None:
    clock = ManualClock(LOCAL)
    budget = WeightBudget(1200, clock)
    schedule = OpenInterestSchedule(["A", "B", "C"], 30.0, 1, budget, clock)
    assert schedule.interval_us() == 30 * S
    seen: list[tuple[int, list[str]]] = []
    for second in range(1, 91):
        clock.set_us(LOCAL + second * S)
        due = schedule.take_due()
        if due:
            seen.append((second, due))
    assert seen == [(10, ["A"]), (20, ["B"]), (30, ["C"]), (40, ["A"]), (50, ["B"]), (60, ["C"]), (70, ["A"]),
                    (80, ["B"]), (90, ["C"])]
    schedule.set_symbols(["C", "D"])  # C keeps its turn, D is new: one interval from now
    assert schedule.due == {"C": LOCAL + 120 * S, "D": LOCAL + 120 * S}


def test_many_symbols_stretch_the_interval_to_fit_the_budget() -> None:
    clock = ManualClock(LOCAL)
    budget = WeightBudget(1200, clock)  # 2400 * SURGE_REST_WEIGHT_SHARE 0.5
    schedule = OpenInterestSchedule([f"S{i}" for i in range(200)], 30.0, 1, budget, clock)
    # 200 polls per interval within a tenth of 1200 per minute: every 100 s.
    assert PLAN_BUDGET_SHARE == 0.1 and schedule.interval_us() == 100 * S


def test_polls_spend_the_shared_budget_and_wait_without_headroom() -> None:
    clock = ManualClock(LOCAL)
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=OPEN_INTEREST)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    rest = BinanceRest(USDM, "http://fapi.test", clock, weight_share=0.5, client=client)
    schedule = OpenInterestSchedule(["BTCUSDT", "ETHUSDT"], 30.0, USDM.open_interest_weight, rest.budget, clock)

    async def poll(symbols: list[str]) -> list[bytes]:
        return [await rest.open_interest(s) for s in symbols]

    clock.set_us(LOCAL + 30 * S)
    due = schedule.take_due()
    assert due == ["BTCUSDT", "ETHUSDT"]
    assert asyncio.run(poll(due)) == [OPEN_INTEREST, OPEN_INTEREST]
    assert [(r.url.path, r.url.params["symbol"]) for r in requests] == [
        ("/fapi/v1/openInterest", "BTCUSDT"), ("/fapi/v1/openInterest", "ETHUSDT")]
    budget = rest.budget
    half = int(budget.per_minute * HEADROOM_SHARE)  # 600 of 1200
    assert budget.headroom(half - 2, HEADROOM_SHARE) and not budget.headroom(half - 1, HEADROOM_SHARE)  # 2 spent
    budget.spend(half - 2)  # snapshots and audits took the rest of the share, at the same time
    assert schedule.due == {"BTCUSDT": LOCAL + 45 * S, "ETHUSDT": LOCAL + 60 * S}
    clock.set_us(LOCAL + 45 * S)
    assert schedule.take_due() == [] and schedule.deferred == 1
    assert schedule.due["BTCUSDT"] == LOCAL + 52_500_000  # put off by a quarter interval
    clock.set_us(LOCAL + 60 * S)
    assert schedule.take_due() == [] and schedule.deferred == 3
    assert schedule.due == {"BTCUSDT": LOCAL + 67_500_000, "ETHUSDT": LOCAL + 67_500_000}
    clock.set_us(LOCAL + 90 * S)  # the minute of t=30 s is over: its spending no longer counts
    assert schedule.take_due() == ["BTCUSDT", "ETHUSDT"] and schedule.polls == 4 and schedule.deferred == 3
    assert schedule.due == {"BTCUSDT": LOCAL + 97_500_000, "ETHUSDT": LOCAL + 97_500_000}
    asyncio.run(client.aclose())
    with pytest.raises(ValueError, match="no open interest"):
        asyncio.run(BinanceRest(SPOT, "http://api.test", clock).open_interest("BTCUSDT"))
