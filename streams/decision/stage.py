"""The decision stage: the pure core, plus what needs Redis: the risk state it obeys and the claims that keep a
position idea to one signal across replicas and restarts.

Per batch: the risk state and the live-quality threshold offsets (``RISK_KEY``, ``ADAPT_KEY``, written by the
outcomes stage) are re-read when the last read is older than ``SURGE_RISK_REFRESH_MS``; the core decides; then
every actionable signal's idea is claimed with ``SET key "signal_id cooldown_until_us" PX cooldown`` when the key
is free (``CLAIM_SCRIPT``: NX, and in event time too, since a replay runs faster than the wall clock the PX
counts: a claim whose cooldown has ended by the new signal's event time is taken over). A claim already held with
the *same* signal id is ours (a redelivery after a restart: the signal is sent again, and the sink keeps one); a
claim held with another id, still cooling, belongs to another process, so the signal is dropped and the idea's
state put back.
With Redis unreachable the stage keeps deciding on its in-memory cooldowns alone (one replica stays correct),
counts it, and says so on /healthz.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import orjson
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas import prediction_pb2
from streams.decision import core
from streams.decision.core import DecisionState
from streams.decision.cost import CostModel
from streams.outcomes.risk import RiskLevel
from streams.runtime.clock import Clock
from streams.runtime.core import InRecord, Outputs, StageContext, StageSpec
from streams.runtime.observability import HealthState
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.storage.cache import ADAPT_KEY, RISK_KEY, open_redis

log = logging.getLogger("surge.decision")


@dataclass
class DecisionRuntime:
    state: DecisionState
    redis: redis.Redis | None
    health: HealthState
    risk_refresh_us: int = 500_000
    risk_read_us: int | None = None      # clock time of the last risk read
    redis_failures: int = 0


def refresh_risk(rt: DecisionRuntime, now_us: int) -> None:
    if rt.redis is None or (rt.risk_read_us is not None and now_us - rt.risk_read_us < rt.risk_refresh_us):
        return
    rt.risk_read_us = now_us
    try:
        raw, adapt_raw = rt.redis.mget([RISK_KEY, ADAPT_KEY])
    except redis.RedisError as exc:
        rt.redis_failures += 1
        log.warning("risk state unreadable, keeping %s: %s", rt.state.risk.name, exc)
        return
    level = RiskLevel[orjson.loads(raw)["level"]] if raw is not None else RiskLevel.NORMAL
    if level != rt.state.risk:
        log.warning("risk state %s -> %s: %s", rt.state.risk.name, level.name,
                    "tier A only" if level == RiskLevel.CAUTIOUS else "stricter tau, half the rate"
                    if level == RiskLevel.RISK_AVERSE else "no actionable signals" if level == RiskLevel.SHUTDOWN
                    else "normal")
    rt.state.risk = level
    adapt = orjson.loads(adapt_raw) if adapt_raw is not None else {}
    rt.state.tau_offset = float(adapt.get("tau_offset", 0.0))
    rt.state.kappa_offset = float(adapt.get("kappa_offset", 0.0))


def claim_ideas(rt: DecisionRuntime, out: Outputs) -> Outputs:
    """Claim each actionable signal's idea in Redis; drop the ones another process owns (module docstring)."""
    claims = rt.state.claims
    if not claims or rt.redis is None:
        return out
    try:
        script = rt.redis.register_script(CLAIM_SCRIPT)
        pipe = rt.redis.pipeline(transaction=False)
        for c in claims:
            script(keys=[c.key], args=[c.signal_id, c.event_us, c.cooldown_until_us, c.ttl_ms], client=pipe)
        owners = pipe.execute()
    except redis.RedisError as exc:
        rt.redis_failures += 1
        log.warning("idea claims unavailable, deciding on local cooldowns only: %s", exc)
        return out
    elsewhere = {c.emit_index for c, owner in zip(claims, owners, strict=True)
                 if _text(owner).split(" ", 1)[0] != c.signal_id}
    return core.drop_unclaimed(rt.state, out, elsewhere)


# SET NX PX, in event time as well: the claim "<signal_id> <cooldown_until_us>" of an idea is taken when the key
# is free, or already this signal's (a redelivery or a replica on the same input), or its cooldown has ended by
# this signal's event time (a replay runs faster than the wall clock the PX counts). Returns the owner's value.
# Lua numbers are doubles: exact for µs timestamps (below 2^53).
CLAIM_SCRIPT: Final = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, until_us = string.match(cur, '^(%S+) (%d+)$')
  if owner == nil then owner = cur end
  if owner == ARGV[1] then return cur end
  if until_us == nil or tonumber(until_us) > tonumber(ARGV[2]) then return cur end
end
local mine = ARGV[1] .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
return mine
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def process(batch: Sequence[InRecord[prediction_pb2.Prediction]], rt: DecisionRuntime, clock: Clock) -> Outputs:
    refresh_risk(rt, clock.now_us())
    out = claim_ideas(rt, core.process(batch, rt.state, clock))
    rt.health.set_live(True, risk=rt.state.risk.name, paused=rt.state.paused or "no",
                       idea_claims="ok" if rt.redis_failures == 0 else f"{rt.redis_failures} redis failure(s)")
    return out


def checkpoint(rt: DecisionRuntime) -> Callable[[], None]:
    """Before a batch: open a journal of the ideas it changes (copied on first change, not all ideas per batch)."""
    state = rt.state
    journal: dict[core.IdeaKey, core.IdeaState | None] = {}
    state.journal = journal
    counts, paused, lag = dict(state.rule_counts), state.paused, state.exchange_lag_us

    def restore() -> None:
        for key, before in journal.items():
            if before is None:
                state.ideas.pop(key, None)
            else:
                state.ideas[key] = before
        journal.clear()
        state.rule_counts, state.paused, state.exchange_lag_us = counts, paused, lag

    return restore


class DecisionMetrics(Collector):
    def __init__(self, rt: DecisionRuntime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.rt.state
        paused = GaugeMetricFamily("surge_decision_paused", "1 while actionable signals are paused (exchange lag)",
                                   labels=["stage"])
        paused.add_metric(["decision"], 1.0 if state.paused else 0.0)
        yield paused
        lag = GaugeMetricFamily("surge_decision_exchange_lag_seconds", "Clock minus the newest input's exchange time",
                                labels=["stage"])
        lag.add_metric(["decision"], state.exchange_lag_us / 1e6)
        yield lag
        risk = GaugeMetricFamily("surge_decision_risk_level", "Risk state obeyed: 0 NORMAL .. 3 SHUTDOWN",
                                 labels=["stage"])
        risk.add_metric(["decision"], float(state.risk))
        yield risk
        rules = CounterMetricFamily("surge_decision_rule_changes", "Signals a rule changed (or suppressed)",
                                    labels=["stage", "rule"])
        for rule, n in sorted(state.rule_counts.items()):
            rules.add_metric(["decision", rule], float(n))
        yield rules
        failures = CounterMetricFamily("surge_decision_redis_failures", "Risk reads or idea claims that failed",
                                       labels=["stage"])
        failures.add_metric(["decision"], float(self.rt.redis_failures))
        yield failures


def make_state(context: StageContext) -> DecisionRuntime:
    settings = context.settings
    client = open_redis(settings.redis_connection_url())
    cost = CostModel.from_settings(settings, clock=context.clock, client=client)  # tables: Redis, L1, artifact
    rt = DecisionRuntime(state=DecisionState.from_settings(settings, cost), redis=client, health=context.health,
                         risk_refresh_us=settings.risk_refresh_ms * 1000)
    context.registry.register(DecisionMetrics(rt))
    return rt


def close_runtime(rt: DecisionRuntime) -> None:
    if rt.redis is not None:
        rt.redis.close()


def spec(settings: Settings) -> StageSpec[DecisionRuntime]:
    return StageSpec(
        name="decision",
        input_topics=(Topic.PREDICTIONS,),
        make_state=make_state,
        process=process,
        checkpoint=checkpoint,
        on_close=close_runtime,
        batch_timeout_ms=0,  # the decision is cheap; waiting to fill a batch would only add latency
    )
