"""What a job can be: its parameters (validated, the gateway's request bodies) and how the worker runs it.

Each kind calls the same function its command line does (``services.training.train.train``,
``services.training.walkforward.walk_forward``, ``services.backtest.engine.run`` and its report), with a
``Reporter`` that turns their progress callbacks into job progress. Defaults a parameter leaves out are the
library's own (``TrainConfig``, ``BacktestConfig``), so a job and the command with the same options do the same.

Paths: a job reads only files under ``SURGE_JOBS_DATA_ROOT``, ``SURGE_DATA_DIR`` or the shipped models, and
writes only under ``<data_dir>/jobs/<job_id>/`` (``JobPaths``), so an admin token cannot make the worker read
or overwrite an arbitrary file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.runtime.settings import Settings

Reporter = Callable[[float, str], None]  # (fraction done 0..1, message)
PathText = Annotated[str, Field(min_length=1, max_length=1_000)]
Horizon = Annotated[int, Field(ge=1, le=1_440)]
Feature = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_]+$")]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainParams(_Params):
    """``surge train`` as a job: LightGBM models on 1-minute klines, an artifact folder and its model card."""

    data: list[PathText] = Field(min_length=1, max_length=100, description="kline files or folders")
    eval: list[PathText] = Field(default_factory=list, max_length=100, description="held-out kline files")
    horizons: list[Horizon] = Field(default=[5, 10, 30], min_length=1, max_length=10)
    objective: Literal["focal", "logloss"] | None = None
    class_weight: Literal["balanced", "none"] | None = None
    calibration: Literal["isotonic", "platt", "beta", "temperature"] | None = None
    calibration_recent_days: float | None = Field(None, ge=0, le=365)
    num_boost_round: int | None = Field(None, ge=1, le=5_000)
    folds: int | None = Field(None, ge=2, le=20)
    lambda_l2: float | None = Field(None, ge=0, le=10_000)
    monotone_increasing: list[Feature] = Field(default_factory=list, max_length=100)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    register_model: bool = Field(False, description="register the artifact in the model registry (not deployed)")


class EvaluateParams(_Params):
    """``surge evaluate --walk-forward`` as a job (the shipped klines recipe unless told otherwise)."""

    data: list[PathText] = Field(min_length=1, max_length=100, description="kline files, oldest first")
    horizon: Horizon = 30
    step: Literal["month", "week"] = "month"
    min_train_days: float = Field(28.0, gt=0, le=3_650)
    window_days: float = Field(0.0, ge=0, le=3_650)


class BacktestParams(_Params):
    """``surge backtest`` as a job: report.json, trades.parquet and report.html, and a ``backtest_runs`` row."""

    data: list[PathText] = Field(min_length=1, max_length=100, description="klines or capture files/folders")
    model: PathText | None = Field(None, description="model folder (default: as `surge backtest`)")
    mode: Literal["conservative", "neutral", "aggressive"] = "conservative"
    latency_ms: str = Field("uniform:10-100", max_length=100, pattern=r"^[a-z]+:[0-9.,\-]+$")
    start_us: int | None = Field(None, ge=0, description="first decision time (µs)")
    end_us: int | None = Field(None, ge=0, description="decisions before this time (µs)")
    seed: int = Field(7, ge=0, le=2**31 - 1)
    capital: float = Field(100_000.0, gt=0, le=1e12)
    horizons: list[Horizon] | None = Field(None, min_length=1, max_length=10)
    profile: Literal["conservative", "balanced", "aggressive"] | None = None


KIND_PARAMS: dict[str, type[_Params]] = {"train": TrainParams, "evaluate": EvaluateParams,
                                         "backtest": BacktestParams}


class JobInputError(ValueError):
    """Parameters that name a path a job may not read, or that the library refuses."""


@dataclass(frozen=True, slots=True)
class JobPaths:
    settings: Settings
    job_id: str

    @property
    def out(self) -> Path:
        return self.settings.data_dir.resolve() / "jobs" / self.job_id

    def roots(self) -> list[Path]:
        from streams.infer.artifacts import SHIPPED, shipped

        shipped_models = shipped(SHIPPED[0]).resolve().parent
        return [self.settings.jobs_data_root.resolve(), self.settings.data_dir.resolve(), shipped_models]

    def confined(self, text: str) -> Path:
        """``text`` as an absolute path under one of the roots, symlinks resolved first; it need not exist here
        (the gateway may not mount the data the worker reads: the worker checks existence when it runs)."""
        if not Path(text).expanduser().is_absolute():
            raise JobInputError(f"{text}: give an absolute path (the gateway and the worker may run in other "
                                "folders)")
        path = Path(text).expanduser().resolve()
        if not any(path == root or path.is_relative_to(root) for root in self.roots()):
            raise JobInputError(f"{text}: not under {', '.join(str(r) for r in self.roots())}")
        return path

    def readable(self, text: str) -> Path:
        """``confined``, and it exists."""
        path = self.confined(text)
        if not path.exists():
            raise JobInputError(f"{text}: does not exist")
        return path

    def files(self, texts: Sequence[str]) -> list[Path]:
        """Files as given; a folder stands for its data files in name order (as ``surge train`` reads it). Each
        listed file is confined too: a symlink inside an allowed folder may not lead out of it."""
        out: list[Path] = []
        for text in texts:
            path = self.readable(text)
            if path.is_dir():
                listed = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
                out.extend(self.readable(str(f)) for f in listed)
            else:
                out.append(path)
        return out


def validate(kind: str, params: dict[str, Any], paths: JobPaths) -> _Params:
    """The parameters parsed and every path they name confined to the roots, before the job is queued."""
    model = KIND_PARAMS[kind].model_validate(params)
    for field in ("data", "eval"):
        for text in getattr(model, field, []) or []:
            paths.confined(text)
    if isinstance(model, BacktestParams) and model.model is not None:
        paths.confined(model.model)
    return model


def run_train(params: TrainParams, paths: JobPaths, report: Reporter) -> dict[str, Any]:
    from services.training.train import TrainConfig, train

    given = params.model_dump(exclude_none=True, exclude={"data", "eval", "register_model", "horizons",
                                                          "monotone_increasing"})
    cfg = TrainConfig(horizons=tuple(params.horizons), monotone_increasing=tuple(params.monotone_increasing),
                      **given)

    def listen(done: int, total: int, description: str) -> None:
        if done >= 0 and total > 0:
            report(0.05 + 0.85 * done / total, description)
        elif done < 0:
            report(-1.0, description)

    out = paths.out / "model"
    report(0.0, "reading klines and labelling")
    card = train(paths.files(params.data), out, cfg, eval_data=paths.files(params.eval), quiet=True,
                 command=f"job train {params.model_dump_json()}", listener=listen)
    result: dict[str, Any] = {"model_version": card["model_version"], "artifact": str(out),
                              "eval": card["metrics"].get("eval", {})}
    if params.register_model:
        from streams.runtime.clock import LiveClock
        from streams.storage.registry import ModelRegistry
        from streams.storage.warehouse import apply_ddl_from, open_warehouse_from

        wh = open_warehouse_from(paths.settings)
        try:
            apply_ddl_from(wh, paths.settings)
            ModelRegistry(wh, LiveClock()).register(out, f"job:{paths.job_id}")
        finally:
            wh.close()
        result["registered"] = True
    return result


def run_evaluate(params: EvaluateParams, paths: JobPaths, report: Reporter) -> dict[str, Any]:
    import json

    from services.training.dataset import klines_frame
    from services.training.train import KLINES_RECIPE, TrainConfig, strict_json
    from services.training.walkforward import report_markdown, walk_forward

    cfg = TrainConfig(horizons=(params.horizon,), **KLINES_RECIPE)
    report(0.0, "reading klines")
    frame = klines_frame(paths.files(params.data))
    result = walk_forward(frame, cfg, horizon=params.horizon, step=params.step,
                          min_train_days=params.min_train_days, window_days=params.window_days,
                          log=lambda line: report(-1.0, line))
    paths.out.mkdir(parents=True, exist_ok=True)
    doc = strict_json(result)
    (paths.out / "walk_forward.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", "utf-8")
    (paths.out / "walk_forward.md").write_text(report_markdown(result), "utf-8")
    return {"report": str(paths.out / "walk_forward.json"), "summary": doc["summary"]}


def run_backtest(params: BacktestParams, paths: JobPaths, report: Reporter) -> dict[str, Any]:
    from services.backtest.engine import BacktestConfig, default_model, run
    from services.backtest.report import build_report, write_outputs
    from services.backtest.store import store_report
    from streams.runtime.clock import LiveClock

    overrides = {"decision_profile": params.profile,
                 "decision_horizons": ",".join(str(h) for h in params.horizons) if params.horizons else None}
    settings = Settings.model_validate({**paths.settings.model_dump(exclude_unset=True),
                                        **{k: v for k, v in overrides.items() if v is not None}})
    data = paths.files(params.data)
    model = paths.readable(params.model) if params.model else default_model(data, settings)
    cfg = BacktestConfig(data=tuple(data), model_dir=model, mode=params.mode, latency=params.latency_ms,
                         start_us=params.start_us, end_us=params.end_us, seed=params.seed, capital=params.capital)
    report(0.0, "features + inference")

    def progress(done: int, total: int) -> None:
        if total:
            report(0.1 + 0.8 * done / total, f"decisions + matching {done}/{total}")

    result = run(cfg, settings, progress)
    doc = build_report(result, settings.to_env())
    outputs = write_outputs(result, doc, paths.out)
    report(0.95, "storing the run")
    table = store_report(settings, doc, LiveClock().now_us())
    return {"run_id": doc["run_id"], "metrics": doc["metrics"], "stored_in": table,
            "files": {k: str(v) for k, v in outputs.items()}}


def execute(kind: str, params: dict[str, Any], paths: JobPaths, report: Reporter) -> dict[str, Any]:
    model = KIND_PARAMS[kind].model_validate(params)
    if isinstance(model, TrainParams):
        return run_train(model, paths, report)
    if isinstance(model, EvaluateParams):
        return run_evaluate(model, paths, report)
    assert isinstance(model, BacktestParams)
    return run_backtest(model, paths, report)
