"""Build the shipped simulator model, reproducibly, from the built-in market simulator.

    python -m services.training.default_model --out streams/infer/artifacts/simulator

It is not the pipeline's default any more (that is ``btcusdt-klines``, trained on real klines): it stays for the
tests and benchmarks that need a model of the simulator's tick-level features (book, sub-minute flow), which
the kline model does not use. The module keeps its name because scripts and the card refer to it.

This module is the simulator's dataset; everything after it is the training pipeline of ``train.py``
(``train_on``), the one ``surge train`` runs on klines: triple-barrier labels of ``labels.py``, purged k-fold CV,
LightGBM, isotonic calibration, ONNX export (``export.py``), parity check and model card.

Data: ``MarketSimulator`` (one per symbol, seed + index) -> ingest core (``streams.ingest.core``: books, 20 ms
TickBatches) -> features core (``compute_frame``: the exact streaming code the features stage runs) -> one bar
per simulated second: open/high/low/close of the mid, and the last feature vector of the second (the features
known at the bar's close, which is the label's entry). Bars of the first ``warmup_s`` are dropped.

Time compression. The simulator's markets move much faster than real ones would in minutes, and simulating
hours per horizon would be slow, so one horizon minute is ``seconds_per_minute`` simulated seconds (default 6:
horizons 5, 10, 30 min are 30, 60, 180 one-second bars). Barriers: the decision stage's cost model
(``streams.decision.cost``) prices a horizon h with the half-width B(h) (20, 28 and 50 bps at 5, 10, 30 min);
under random-walk scaling a horizon compressed by a factor c keeps its hit probabilities with barriers
B(h) / sqrt(c), c = 60 / seconds_per_minute (about 6.3, 8.9, 15.8 bps).

Labels: 1 if the upper barrier is touched first, 0 if the lower one is (or both in one bar); if neither within
the horizon, the sign of the move at the vertical barrier, and no label if there is none (``timeout="sign"``),
so 1 - p_up is P(lower barrier first). model.json states no labels: the decision stage then prices a prediction
with B(h) on both sides and may price SHORTs, which is exactly what the compressed barriers stand for.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas import common_pb2, market_pb2
from services.training.dataset import DataError, LabelSpec, check_frame, label_frame
from services.training.export import round_thresholds as round_thresholds  # noqa: PLC0414 (see below)
from services.training.export import to_onnx as to_onnx  # noqa: PLC0414
from services.training.labels import BarrierConfig
from services.training.train import Steps, TrainConfig, TrainingSet, train_on
from streams.decision.cost import CostModel
from streams.features.core import FeatureState, compute_frame
from streams.features.definitions import FEATURE_NAMES, FEATURE_VERSION, FEATURES
from streams.infer.model import physical_cores
from streams.runtime.clock import ManualClock

IntArray = npt.NDArray[np.int64]
# round_thresholds and to_onnx above are export.py's, re-exported only because tests/bench/test_infer_bench.py
# still imports them from here; import them from services.training.export.

US = 1_000_000
BAR_MS = 1_000  # one simulated second
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z: a fixed epoch, so runs are byte-identical
DEFAULT_OUT = Path("streams/infer/artifacts/simulator")
# Not model inputs on the simulator: time of day (one simulated hour: it only says where in the run a sample is),
# windows >= 15 min (NaN for the first half of every run, so they too encode the position in the run) and the
# derivatives features (the simulator has no mark prices).
SIM_EXCLUDED_FEATURES = frozenset(
    f.name for f in FEATURES
    if f.name in ("tod_sin", "tod_cos") or f.category == "derivatives" or (f.window_s or 0.0) >= 900.0)
MODEL_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in SIM_EXCLUDED_FEATURES)

# What the default model is trained with: the pipeline's own config, sized for about 17,000 one-second samples.
TRAIN_CONFIG = TrainConfig(
    objective="logloss",
    class_weight="none",
    uniqueness=False,
    num_boost_round=50,
    learning_rate=0.05,
    num_leaves=15,
    min_child_samples=100,
    feature_fraction=0.9,
    bagging_fraction=1.0,
    lambda_l2=0.0,
    features=MODEL_FEATURES,
)


def decision_barrier_bps(horizon_min: int) -> float:
    """B(h): the barrier half-width (bps) the decision stage prices a horizon with (fees do not enter it)."""
    return CostModel(fee_bps=0.0).horizon_move_bps(horizon_min)


@dataclass(frozen=True)
class SimConfig:
    """The simulated markets and their time compression."""

    seed: int = 7
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
    events_per_s: float = 300.0  # per symbol; the simulator's volatility does not depend on the event rate
    duration_s: float = 3600.0  # simulated seconds per symbol
    microbatch_ms: int = 20
    drive_step_ms: int = 10  # how often the simulated ingest loop polls the simulator
    seconds_per_minute: int = 6  # simulated seconds (= bars) per horizon minute
    warmup_s: float = 60.0
    workers: int = 0  # 0: physical cores

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("the simulator needs at least one symbol")
        if self.seconds_per_minute < 1:
            raise ValueError(f"seconds_per_minute must be a positive whole number, got {self.seconds_per_minute}")

    @property
    def compression(self) -> float:
        return 60.0 / self.seconds_per_minute

    def barrier_bps(self, horizon_min: int) -> float:
        """The label's half-width on the simulator: B(h) / sqrt(compression)."""
        return decision_barrier_bps(horizon_min) / math.sqrt(self.compression)

    def label_spec(self, horizons: Sequence[int]) -> LabelSpec:
        return LabelSpec({h: BarrierConfig(self.barrier_bps(h) * 1e-4, self.barrier_bps(h) * 1e-4,
                                           h * self.seconds_per_minute) for h in horizons},
                         bar_ms=BAR_MS, timeout="sign")


# --- data: simulator -> ingest core -> features core -> one-second bars -------------------------------------------


def simulate_batches(symbol: str, index: int, sim: SimConfig) -> Iterator[market_pb2.TickBatch]:
    """TickBatches of one symbol exactly as the ingest stage would build them from the simulator."""
    from streams.ingest import core as ingest
    from streams.ingest.simulator import MarketSimulator

    simulator = MarketSimulator([symbol], sim.events_per_s, sim.seed + index)
    clock = ManualClock(START_US)
    state = ingest.IngestState(venue=common_pb2.SIMULATOR, microbatch_ms=sim.microbatch_ms)
    simulator.advance(START_US)  # anchors the simulator's grid
    pending = [ingest.apply_snapshot(state, s, snap, clock) for s, snap in simulator.snapshots().items()]
    step = sim.drive_step_ms * 1000
    end = START_US + round(sim.duration_s * US)
    now = START_US
    while now < end:
        now += step
        clock.set_us(now)
        out = ingest.process([(s, raw, now) for s, raw in simulator.advance(now)], state, clock)
        pending.append(out)
        for resync in out.resync_requests:
            pending.append(ingest.apply_snapshot(state, resync, simulator.snapshot(resync), clock))
        for o in pending:
            for emit in o.emits:
                assert isinstance(emit.value, market_pb2.TickBatch)
                yield emit.value
        pending = []
    for emit in ingest.flush(state, clock, force=True).emits:
        assert isinstance(emit.value, market_pb2.TickBatch)
        yield emit.value


@dataclass
class SymbolBars:
    symbol: str
    bars: pd.DataFrame  # symbol, ts (bar open, ms), FEATURE_NAMES, feature_version, open, high, low, close
    n_batches: int
    n_vectors: int


def symbol_bars(args: tuple[str, int, SimConfig]) -> SymbolBars:
    """Simulate one symbol and tabulate it with the streaming features core (in chunks, to bound memory) into
    one-second bars of the mid, each with the last feature vector of its second."""
    symbol, index, sim = args
    state = FeatureState()
    secs: list[IntArray] = []
    mids: list[npt.NDArray[np.float64]] = []
    lasts: list[pd.DataFrame] = []
    chunk: list[market_pb2.TickBatch] = []
    n_batches = n_vectors = 0
    first_us: int | None = None

    def consume(batches: list[market_pb2.TickBatch]) -> None:
        nonlocal n_vectors, first_us
        frame = compute_frame(batches, state=state)
        n_vectors += len(frame)
        if frame.empty:
            return
        if first_us is None:
            first_us = int(frame["exchange_us"].iloc[0])
        frame = frame[frame["mid_price"].notna()]
        sec = frame["exchange_us"].to_numpy(dtype=np.int64) // US
        secs.append(sec)
        mids.append(frame["mid_price"].to_numpy(dtype=np.float64))
        lasts.append(frame.assign(sec=sec).drop_duplicates("sec", keep="last"))

    for tb in simulate_batches(symbol, index, sim):
        chunk.append(tb)
        n_batches += 1
        if len(chunk) >= 5_000:
            consume(chunk)
            chunk = []
    consume(chunk)
    if first_us is None or not secs:
        raise DataError(f"{symbol}: the simulator produced no feature vector with a mid price")
    sec = np.concatenate(secs)
    mid = np.concatenate(mids)
    if np.any(np.diff(sec) < 0):
        raise DataError(f"{symbol}: feature vectors out of exchange-time order")
    starts = np.flatnonzero(np.r_[True, sec[1:] != sec[:-1]])
    ends = np.r_[starts[1:], len(sec)] - 1
    last = pd.concat(lasts, ignore_index=True).drop_duplicates("sec", keep="last").reset_index(drop=True)
    assert last["sec"].tolist() == sec[starts].tolist()
    bars = last[["symbol", *FEATURE_NAMES, "feature_version"]].assign(
        ts=sec[starts] * 1000, open=mid[starts], high=np.maximum.reduceat(mid, starts),
        low=np.minimum.reduceat(mid, starts), close=mid[ends])
    warm = bars["ts"].to_numpy() * 1000 >= first_us + sim.warmup_s * US
    bars = bars.loc[warm, ["symbol", "ts", *FEATURE_NAMES, "feature_version", "open", "high", "low", "close"]]
    return SymbolBars(symbol, bars.reset_index(drop=True), n_batches, n_vectors)


def simulator_set(sim: SimConfig, cfg: TrainConfig, steps: Steps | None = None, command: str = "") -> TrainingSet:
    """The simulator's dataset: one-second bars of every symbol, labelled (``sim.label_spec``), all for training."""
    steps = steps or Steps(quiet=True)
    workers = sim.workers or physical_cores()
    steps.log(f"simulating {len(sim.symbols)} symbols x {sim.duration_s:.0f} s with {workers} worker(s)")
    jobs = [(s, i, sim) for i, s in enumerate(sim.symbols)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            data = list(pool.map(symbol_bars, jobs))
    else:
        data = [symbol_bars(j) for j in jobs]
    for d in data:
        steps.log(f"{d.symbol}: {d.n_batches} batches, {len(d.bars)} one-second bars")
    frame = pd.concat([d.bars for d in data], ignore_index=True)
    version = check_frame(frame)
    if version != FEATURE_VERSION:
        raise DataError(f"feature version {version} differs from the code's {FEATURE_VERSION}")
    spec = sim.label_spec(cfg.horizons)
    lab = label_frame(frame, spec)
    none: IntArray = np.zeros(0, dtype=np.int64)
    horizons = cfg.horizons
    labels = {
        "kind": "triple_barrier_1s_bars_simulated",
        "bars": "1-second (simulated)",
        "horizon_bars": {str(h): spec.barriers[h].horizon for h in horizons},
        "barrier_bps": {str(h): sim.barrier_bps(h) for h in horizons},
        "decision_barrier_bps": {str(h): decision_barrier_bps(h) for h in horizons},
        "entry": "close of the bar",
        "both_in_one_bar": "DOWN",
        "timeout": "sign of the move at the horizon (no label if flat)",
    }
    simulation = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(sim).items()},
        "seeds": {s: sim.seed + i for i, s in enumerate(sim.symbols)},
        "batches": sum(d.n_batches for d in data),
        "vectors": sum(d.n_vectors for d in data),
        "rejected_batches": sum(d.n_batches - d.n_vectors for d in data),
        "bars_per_symbol": {d.symbol: len(d.bars) for d in data},
        "seconds_per_horizon_minute": sim.seconds_per_minute,
    }
    return TrainingSet(
        lab=lab,
        feature_version=version,
        rows={h: (np.flatnonzero(lab.valid(h)).astype(np.int64), none) for h in horizons},
        labels=labels,
        serve_labels=False,
        version_prefix="sim",
        source="streams.ingest.simulator.MarketSimulator -> streams.ingest.core -> streams.features.core "
               "(compute_frame) -> one-second bars",
        command=command or f"python -m services.training.default_model --out {DEFAULT_OUT}",
        intended_use="default model of the surge pipeline on simulated markets; retrain on venue data "
                     "before trusting it with real money",
        limitations=lambda training: sim_limitations(sim, horizons),
        provenance={"simulation": simulation},
    )


def sim_limitations(sim: SimConfig, horizons: Sequence[int]) -> list[str]:
    barriers = ", ".join(f"{decision_barrier_bps(h):g} -> {sim.barrier_bps(h):.2f} bps at {h} min" for h in horizons)
    return [
        f"Trained on the built-in simulator ({', '.join(sim.symbols)}, {sim.duration_s:.0f} simulated s each); "
        "it is what a fresh install serves, not a trading model.",
        f"Time compression: one horizon minute is {sim.seconds_per_minute} simulated seconds, and the barriers are "
        f"the decision stage's B(h) / sqrt({sim.compression:g}) ({barriers}). model.json states no labels, so the "
        "decision stage prices its predictions with B(h) itself.",
        "Not model inputs: time of day, windows of 15 minutes or more and the derivatives features.",
        "No held-out period: the metrics are out-of-fold (purged CV, cross-fitted calibration).",
    ]


def build(sim: SimConfig, out_dir: Path, cfg: TrainConfig = TRAIN_CONFIG, *, quiet: bool = False,
          command: str = "") -> dict[str, Any]:
    """Simulate, then train with the pipeline of ``train.py``; writes the artifact folder and returns the card."""
    steps = Steps(quiet)
    return train_on(simulator_set(sim, cfg, steps, command), out_dir, cfg, steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=SimConfig.seed, help="simulator and LightGBM seed")
    parser.add_argument("--duration-s", type=float, default=SimConfig.duration_s)
    parser.add_argument("--events-per-s", type=float, default=SimConfig.events_per_s)
    parser.add_argument("--symbols", default=",".join(SimConfig.symbols))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    sim = SimConfig(
        seed=args.seed,
        duration_s=args.duration_s,
        events_per_s=args.events_per_s,
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        workers=args.workers,
    )
    words = sys.argv[1:] if argv is None else list(argv)
    build(sim, args.out, replace(TRAIN_CONFIG, seed=args.seed), quiet=args.quiet,
          command=" ".join(["python -m services.training.default_model", *map(shlex.quote, words)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
