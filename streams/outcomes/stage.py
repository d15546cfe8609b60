"""The outcomes stage: signals.v1 + ticks.v1 -> outcomes.v1, with the paper book and the risk state machine.

At every commit (``flush``, before offsets are committed): risk transitions are written to ClickHouse
``audit_logs``; the risk state is published to Redis (``RISK_KEY``), where the decision stage reads it; an
operator's reset request (``RISK_RESET_KEY``, from ``surge risk reset``) is taken; and the whole state is saved
as a snapshot (``OUTCOMES_SNAPSHOT_KEY``) that a restarted stage resumes from (``snapshot.py``). While Redis or
the warehouse is down, the runner pauses the consumer and retries the flush: the snapshot must be written before
the input it reflects is committed.

For one outcomes process per deployment (the default), every symbol's signals and ticks meet in this process.
Scaled out, both topics must be co-partitioned (same partition count, range assignment) so a symbol's signals
and ticks reach the same replica.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson
import redis
from google.protobuf.message import Message
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas import common_pb2
from streams.decision.cost import CostModel
from streams.outcomes import core, risk, snapshot
from streams.runtime.clock import Clock
from streams.runtime.core import DownstreamUnavailable, InRecord, Outputs, Reject, StageContext, StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.storage.cache import ADAPT_KEY, OUTCOMES_SNAPSHOT_KEY, RISK_KEY, RISK_RESET_KEY, open_redis
from streams.storage.registry import AUDIT_COLUMNS, ModelRegistry, RegistryError, audit_row
from streams.storage.warehouse import (
    DEFAULT_TTL_DAYS,
    Warehouse,
    WarehouseError,
    apply_ddl,
    open_warehouse_from,
    settings_ttl_days,
)

log = logging.getLogger("surge.outcomes")

ACTOR = "outcomes-stage"


def parse_triple(text: str, kind: type[int] | type[float], name: str) -> tuple[float, float, float]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 3:
        raise ValueError(f"{name} needs three comma-separated values, got {text!r}")
    return (kind(parts[0]), kind(parts[1]), kind(parts[2]))


def config_from_settings(settings: Settings) -> core.OutcomesConfig:
    streaks = parse_triple(settings.risk_loss_streaks, int, "SURGE_RISK_LOSS_STREAKS")
    policy = risk.RiskPolicy(
        loss_streaks=(int(streaks[0]), int(streaks[1]), int(streaks[2])),
        drawdowns=parse_triple(settings.risk_drawdowns, float, "SURGE_RISK_DRAWDOWNS"),
        recovery_wins=settings.risk_recovery_wins,
        recovery_quiet_us=round(settings.risk_recovery_quiet_s * 1e6),
        shutdown_cooloff_us=round(settings.risk_shutdown_cooloff_s * 1e6),
        position_fraction=settings.risk_position_fraction,
    )
    cost = CostModel.from_settings(settings)
    fees = {int(v): cost.round_trip_fee_bps(int(v)) for v in common_pb2.Venue.values()}
    return core.OutcomesConfig(round_trip_fees=fees, stale_grace_us=round(settings.outcomes_stale_grace_s * 1e6),
                               policy=policy)


QUALITY_COLUMNS = ("at_us", "model_version", "n", "ece_pp", "brier", "pr_auc", "hit_at_k", "avg_utility_bps",
                   "false_positive_rate", "cost_mape_pct", "tau_offset", "kappa_offset")
QUALITY_EVERY_US = 10_000_000  # of event time between two live_quality rows


@dataclass
class OutcomesRuntime:
    state: core.OutcomesState
    redis: redis.Redis
    warehouse: Warehouse
    database: str | None = None   # set: the schema is applied before the first audit insert
    ttl_days: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TTL_DAYS))  # of the tables it creates
    registry: ModelRegistry | None = None
    quality_written_us: int = 0


def take_reset(rt: OutcomesRuntime) -> None:
    """Apply an operator's reset request, if one is waiting; audited like any transition."""
    raw = rt.redis.getdel(RISK_RESET_KEY)
    if raw is None:
        return
    try:
        request = orjson.loads(raw)
        actor = str(request["actor"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        log.error("ignoring a malformed risk reset request %r: %s", raw, exc)
        return
    state = rt.state
    before = state.risk.level
    state.risk = risk.reset(state.risk, state.watermark_us, actor)
    state.transitions.append((before.name, state.risk.level.name, state.watermark_us,
                              f"{state.risk.reason}: {request.get('reason', '')}".rstrip(": ")))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def learn_held_out_ece(rt: OutcomesRuntime) -> None:
    """The held-out ECE of every model in the quality window, from the registry, so drift is measured against
    what the model promised; a model the registry does not know counts as 0 pp."""
    state = rt.state
    for sample in state.quality.samples:
        version = sample.model_version
        if version in state.held_out_ece_pp or rt.registry is None:
            continue
        try:
            ece = rt.registry.get(version).calibration_ece
        except RegistryError:
            ece = math.nan
        state.held_out_ece_pp[version] = ece * 100.0  # the registry keeps ECE as a fraction


def write_quality(rt: OutcomesRuntime) -> None:
    state, rep = rt.state, rt.state.quality.last
    if rep is None or rep.n == 0 or state.watermark_us - rt.quality_written_us < QUALITY_EVERY_US:
        return
    row = [state.watermark_us, rep.model_version, rep.n, *(_finite(v) for v in (
        rep.ece_pp, rep.brier, rep.pr_auc, rep.hit_at_k, rep.avg_utility_bps, rep.false_positive_rate,
        rep.cost_mape_pct)), state.quality.tau_offset, state.quality.kappa_offset]
    rt.warehouse.insert("live_quality", [row], QUALITY_COLUMNS)
    rt.quality_written_us = state.watermark_us


def flush(rt: OutcomesRuntime) -> list[Reject]:
    try:
        if rt.database is not None:
            apply_ddl(rt.warehouse, rt.database, rt.ttl_days)
            rt.database = None
        take_reset(rt)
        state = rt.state
        learn_held_out_ece(rt)
        rows = [audit_row(f"risk_{to.lower()}", ACTOR, "", before, reason, at_us)
                for before, to, at_us, reason in state.transitions]
        rows += [audit_row(f"quality_{action}", ACTOR, model, "", reason, at_us)
                 for action, model, at_us, reason in state.quality_events]
        if rows:
            rt.warehouse.insert("audit_logs", rows, AUDIT_COLUMNS)
            for before, to, _, reason in state.transitions:
                log.warning("RISK %s -> %s: %s", before, to, reason)
            for action, model, _, reason in state.quality_events:
                log.warning("QUALITY %s (%s): %s", action, model, reason)
            state.transitions, state.quality_events = [], []
        write_quality(rt)
        pipe = rt.redis.pipeline(transaction=True)
        pipe.set(RISK_KEY, orjson.dumps(state.risk.to_json()))
        pipe.set(ADAPT_KEY, orjson.dumps({"tau_offset": state.quality.tau_offset,
                                          "kappa_offset": state.quality.kappa_offset}))
        pipe.set(OUTCOMES_SNAPSHOT_KEY, snapshot.dumps(state))
        pipe.execute()
    except (redis.RedisError, WarehouseError) as exc:
        raise DownstreamUnavailable(f"outcomes state: {exc}") from exc
    return []


def checkpoint(rt: OutcomesRuntime) -> Callable[[], None]:
    return rt.state.checkpoint()


def process(batch: Sequence[InRecord[Message]], rt: OutcomesRuntime, clock: Clock) -> Outputs:
    return core.process(batch, rt.state, clock)


class OutcomesMetrics(Collector):
    """The paper book and the risk state, read from the stage's state at scrape time."""

    def __init__(self, rt: OutcomesRuntime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.rt.state
        gauges = (
            ("surge_outcomes_open_positions", "Signals followed and not yet resolved", float(state.open_count())),
            ("surge_outcomes_paper_equity", "Paper book equity (starts at 1.0)", state.risk.equity),
            ("surge_outcomes_paper_drawdown", "Paper book drawdown from its high-water mark", state.risk.drawdown),
            ("surge_risk_level", "Risk state: 0 NORMAL, 1 CAUTIOUS, 2 RISK_AVERSE, 3 SHUTDOWN",
             float(state.risk.level)),
            ("surge_outcomes_consecutive_losses", "Current losing streak", float(state.risk.consecutive_losses)),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["stage"])
            gauge.add_metric(["outcomes"], value)
            yield gauge
        pnl = GaugeMetricFamily("surge_outcomes_pnl_bps", "Net paper PnL per symbol, bps summed over signals",
                                labels=["stage", "symbol"])
        for symbol, value in sorted(state.pnl_bps_by_symbol.items()):
            pnl.add_metric(["outcomes", symbol], value)
        yield pnl
        rep = state.quality.last
        if rep is not None:
            quality = GaugeMetricFamily("surge_live_quality", "Live signal quality over the rolling outcomes window "
                                        "(ece_pp, ece_drift_pp, brier, pr_auc, hit_at_k, avg_utility_bps, "
                                        "false_positive_rate, cost_mape_pct, n)", labels=["stage", "metric"])
            for name in ("ece_pp", "brier", "pr_auc", "hit_at_k", "avg_utility_bps", "false_positive_rate",
                         "cost_mape_pct", "n"):
                value = float(getattr(rep, name))
                if math.isfinite(value):
                    quality.add_metric(["outcomes", name], value)
            held_out = state.held_out_ece_pp.get(rep.model_version, math.nan)
            drift = rep.ece_pp - (held_out if math.isfinite(held_out) else 0.0)
            if math.isfinite(drift):
                quality.add_metric(["outcomes", "ece_drift_pp"], drift)  # live minus the model's held-out ECE
            yield quality
        offsets = GaugeMetricFamily("surge_decision_threshold_offset", "Offsets live quality adds to the decision "
                                    "thresholds", labels=["stage", "threshold"])
        offsets.add_metric(["outcomes", "tau"], state.quality.tau_offset)
        offsets.add_metric(["outcomes", "kappa"], state.quality.kappa_offset)
        yield offsets
        counts = CounterMetricFamily("surge_outcomes_events", "Signals opened, resolved by label, skipped",
                                     labels=["stage", "kind"])
        for kind, n in sorted(state.counts.items()):
            counts.add_metric(["outcomes", kind], float(n))
        yield counts


def make_state(context: StageContext) -> OutcomesRuntime:
    """Resume from the last snapshot in Redis, or start empty; the metrics go on the stage's /metrics."""
    settings = context.settings
    config = config_from_settings(settings)
    client = open_redis(settings.redis_connection_url())
    raw = client.get(OUTCOMES_SNAPSHOT_KEY)
    if raw is None:
        state = core.OutcomesState(config=config)
        log.info("outcomes: no snapshot, starting with an empty paper book")
    else:
        state = snapshot.loads(raw, config)  # type: ignore[arg-type]  # a sync client returns bytes
        log.info("outcomes: resumed %d open signal(s), risk %s, %d outcome(s) to send again",
                 state.open_count(), state.risk.level.name, len(state.replay_on_start))
    warehouse = open_warehouse_from(settings)
    rt = OutcomesRuntime(state=state, redis=client, warehouse=warehouse, database=settings.clickhouse_database,
                         ttl_days=settings_ttl_days(settings),
                         registry=ModelRegistry(warehouse, context.clock))
    context.registry.register(OutcomesMetrics(rt))
    return rt


def close_runtime(rt: OutcomesRuntime) -> None:
    rt.redis.close()
    rt.warehouse.close()


def spec(settings: Settings) -> StageSpec[OutcomesRuntime]:
    return StageSpec(
        name="outcomes",
        input_topics=(Topic.SIGNALS, Topic.TICKS),
        make_state=make_state,
        process=process,
        flush=flush,
        checkpoint=checkpoint,
        on_close=close_runtime,
        batch_timeout_ms=settings.outcomes_flush_ms,
    )


def main() -> int:
    from streams.runtime.observability import configure_logging
    from streams.runtime.runner import StageRunner

    settings = Settings()
    configure_logging(settings, "outcomes")
    return StageRunner(spec(settings), settings).run()


if __name__ == "__main__":
    raise SystemExit(main())
