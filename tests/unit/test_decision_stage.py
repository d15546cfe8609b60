"""The decision stage around its core, against a real Redis: idea claims across processes, the risk state."""

from __future__ import annotations

import orjson
import pytest
import redis

from schemas import signal_pb2
from streams.decision import stage
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs, StageContext
from streams.storage.cache import RISK_KEY
from tests.unit.test_decision_core import SECOND, T0, pred, settings

pytestmark = pytest.mark.unit


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    return r


def process_of(redis_url: str, **overrides: object) -> stage.DecisionRuntime:
    """One decision process: its own in-memory state, the shared Redis."""
    # No fees, so the shipped tables' slippage alone is the cost and the probabilities below act as written.
    s = settings(**{"redis_url": redis_url, "cooldown_low_vol_s": 1800, "risk_refresh_ms": 0,
                    "fee_spot_taker_bps": 0.0, **overrides})
    return stage.spec(s).make_state(StageContext.standalone("decision", s))


def run(rt: stage.DecisionRuntime, clock: ManualClock, *preds: object) -> Outputs:
    return stage.process([InRecord(value=p, key="") for p in preds], rt, clock)  # type: ignore[arg-type]


def ids(out: Outputs) -> list[str]:
    return [e.value.signal_id for e in out.emits]  # type: ignore[attr-defined]


def test_two_processes_publish_one_signal_per_idea(redis_url: str, client: redis.Redis) -> None:
    """Tried: process A sees prediction 1 of BTCUSDT; process B, with empty memory (a second replica, or A
    restarted), sees prediction 2 of the same idea a second later. Only A's signal exists; an ETHUSDT idea that
    only B sees is B's."""
    clock = ManualClock(T0)
    a, b = process_of(redis_url), process_of(redis_url)
    assert ids(run(a, clock, pred(0.9, i=1))) == ["BTCUSDT:1:m7:5"]
    clock.advance_us(SECOND)
    assert ids(run(b, clock, pred(0.9, i=2), pred(0.9, i=3, symbol="ETHUSDT"))) == ["ETHUSDT:3:m7:5"]
    assert b.state.rule_counts == {"claimed_elsewhere": 1}
    # The claim holds the owner and the end of its cooldown in event time (prediction time + 30 min).
    assert client.get("surge:idea:BINANCE_SPOT:BTCUSDT:5") == f"BTCUSDT:1:m7:5 {T0 - 50_000 + 1800 * SECOND}".encode()
    assert 1_799_000 <= int(client.pttl("surge:idea:BINANCE_SPOT:BTCUSDT:5")) <= 1_800_000


def test_a_replay_faster_than_the_wall_clock_takes_the_idea_again_once_its_event_time_cooldown_ended(
        redis_url: str, client: redis.Redis) -> None:
    """A replay at full speed: the next prediction of the idea is 30 min later in event time but a moment later
    on the wall clock, where the first claim's PX has not run out. Its cooldown has ended in event time, so a
    process with empty memory (a restart, a replica) takes the idea and publishes, once; a prediction still
    inside the new cooldown does not."""
    clock = ManualClock(T0)
    assert ids(run(process_of(redis_url), clock, pred(0.9, i=1))) == ["BTCUSDT:1:m7:5"]
    later = T0 - 50_000 + 1800 * SECOND
    clock.set_us(later + 50_000)
    fresh = process_of(redis_url)
    assert ids(run(fresh, clock, pred(0.9, i=2, exchange_us=later))) == ["BTCUSDT:2:m7:5"]
    other = process_of(redis_url)
    clock.advance_us(SECOND)
    assert ids(run(other, clock, pred(0.9, i=3, exchange_us=later + SECOND))) == []
    assert other.state.rule_counts == {"claimed_elsewhere": 1}
    assert client.get("surge:idea:BINANCE_SPOT:BTCUSDT:5") == f"BTCUSDT:2:m7:5 {later + 1800 * SECOND}".encode()


def test_a_restarted_process_resends_its_own_unacknowledged_signal(redis_url: str, client: redis.Redis) -> None:
    """A redelivered prediction yields the same signal id, which matches the claim: it is sent again (the sink
    keeps one), never lost."""
    clock = ManualClock(T0)
    assert ids(run(process_of(redis_url), clock, pred(0.9, i=1))) == ["BTCUSDT:1:m7:5"]
    restarted = process_of(redis_url)
    assert ids(run(restarted, clock, pred(0.9, i=1))) == ["BTCUSDT:1:m7:5"]


def test_the_decision_obeys_the_risk_state_in_redis(redis_url: str, client: redis.Redis) -> None:
    clock = ManualClock(T0)
    rt = process_of(redis_url, cooldown_low_vol_s=0)
    client.set(RISK_KEY, orjson.dumps({"level": "SHUTDOWN"}))
    assert run(rt, clock, pred(0.99, i=1)).emits == []
    assert rt.state.rule_counts == {"risk_shutdown": 1}
    client.set(RISK_KEY, orjson.dumps({"level": "CAUTIOUS"}))
    out = run(rt, clock, pred(0.99, i=2), pred(0.70, i=3, symbol="ETHUSDT"))  # ETH is tier B: p < tau_A
    assert [(e.value.signal_id, e.value.tier) for e in out.emits] == [  # type: ignore[attr-defined]
        ("BTCUSDT:2:m7:5", signal_pb2.TIER_A)]
    client.delete(RISK_KEY)
    assert ids(run(rt, clock, pred(0.70, i=4, symbol="ETHUSDT"))) == ["ETHUSDT:4:m7:5"]


def test_without_redis_the_local_cooldown_still_holds(tmp_path: object) -> None:
    rt = process_of("unix:///nonexistent/redis.sock")
    clock = ManualClock(T0)
    assert ids(run(rt, clock, pred(0.9, i=1))) == ["BTCUSDT:1:m7:5"]
    assert run(rt, clock, pred(0.9, i=2)).emits == []
    assert rt.redis_failures == 3  # two risk reads and one claim round (the second batch had none to claim)


def test_a_restored_checkpoint_undoes_exactly_what_the_batch_changed(redis_url: str, client: redis.Redis) -> None:
    """Tried: a batch that starts a new idea (ETHUSDT) and changes an existing one (BTCUSDT after its cooldown),
    rolled back as the runner does when process() raises: the ideas, rule counts and pause are as before it, and
    only the two touched ideas were copied."""
    clock = ManualClock(T0)
    rt = process_of(redis_url, cooldown_low_vol_s=1)
    assert ids(run(rt, clock, pred(0.9, i=1))) == ["BTCUSDT:1:m7:5"]
    before = {key: (idea.last_decision, idea.cooldown_until_us) for key, idea in rt.state.ideas.items()}
    counts = dict(rt.state.rule_counts)
    clock.advance_us(5 * SECOND)
    restore = stage.checkpoint(rt)
    out = run(rt, clock, pred(0.9, i=2, exchange_us=T0 + 5 * SECOND), pred(0.9, i=3, symbol="ETHUSDT"))
    assert len(out.emits) == 2 and len(rt.state.ideas) == 2
    assert rt.state.journal is not None and len(rt.state.journal) == 2
    restore()
    assert {key: (idea.last_decision, idea.cooldown_until_us) for key, idea in rt.state.ideas.items()} == before
    assert rt.state.rule_counts == counts
