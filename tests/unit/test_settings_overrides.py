"""CLI flags become Settings objects, never os.environ writes; children get them from ``Settings.to_env()``;
the features batch drivers take their settings as arguments and never read SURGE_* themselves."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from services.cli import app
from services.stack.supervisor import ChildSpec, Supervisor
from streams.features.batch import capture_batches, compute_capture_frame, compute_inputs_frame
from streams.runtime.settings import ENV_PREFIX, Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No SURGE_* variable from the machine running the tests; monkeypatch restores them afterwards."""
    for key in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    yield monkeypatch


def env_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What ``Settings()`` gives in a process started with ``env`` (its SURGE_* part)."""
    for key in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    return Settings()


# --- Settings.with_overrides / to_env / defaults -----------------------------------------------------------------


def test_overrides_win_over_the_environment_and_none_means_not_given(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SURGE_SYMBOLS", "AAAUSDT")
    clean_env.setenv("SURGE_PARTITIONS", "3")
    s = Settings.with_overrides(symbols="BBBUSDT", partitions=None, venue="usdm")
    assert (s.symbols, s.partitions, s.venue) == ("BBBUSDT", 3, "usdm")
    assert s.model_fields_set == {"symbols", "partitions", "venue"}
    with pytest.raises(ValidationError, match="symbolz"):  # a misspelt override is an error (extra=forbid)
        Settings.with_overrides(symbolz="X")
    with pytest.raises(ValidationError, match="venue"):  # and values are validated as the environment's are
        Settings.with_overrides(venue="margin")
    clean_env.setenv("SURGE_SYMBOLZ", "X")  # unknown SURGE_* variables are still refused with init values
    with pytest.raises(ValidationError, match="SURGE_SYMBOLZ"):
        Settings.with_overrides(symbols="BBBUSDT")


def test_to_env_renders_exactly_the_set_fields_and_round_trips(clean_env: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    assert Settings().to_env() == {}
    clean_env.setenv("SURGE_PARTITIONS", "4")
    s = Settings.with_overrides(source="replay:/captures", data_dir=tmp_path, replay_exit=True,
                                sim_events_per_s=123.5, warehouse_token="t" * 43, brokers=None)
    assert s.to_env() == {
        "SURGE_DATA_DIR": str(tmp_path), "SURGE_PARTITIONS": "4", "SURGE_REPLAY_EXIT": "true",
        "SURGE_SIM_EVENTS_PER_S": "123.5", "SURGE_SOURCE": "replay:/captures", "SURGE_WAREHOUSE_TOKEN": "t" * 43,
    }
    assert env_from(s.to_env(), clean_env) == s


def test_every_setting_round_trips_through_to_env(clean_env: pytest.MonkeyPatch) -> None:
    """Every field explicitly set (at its default): a child's Settings() equals the parent's object, for every
    type in the model, including fields added later."""
    defaults = Settings.defaults()
    explicit = Settings(**{name: getattr(defaults, name) for name in Settings.model_fields})
    env = explicit.to_env()
    nullable = {n for n, f in Settings.model_fields.items() if f.default is None}
    assert set(env) == {ENV_PREFIX + n.upper() for n in Settings.model_fields if n not in nullable}
    assert env_from(env, clean_env) == explicit == Settings()


def test_none_is_the_default_of_every_nullable_setting() -> None:
    """to_env leaves None out, which is right only while None is never a non-default value."""
    for name, field in Settings.model_fields.items():
        if type(None) in typing.get_args(field.annotation) or field.annotation is types.NoneType:
            assert field.default is None, name


def test_defaults_ignore_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SURGE_MICROBATCH_MS", "10")
    clean_env.setenv("SURGE_NOT_A_SETTING", "1")
    d = Settings.defaults()
    assert d.microbatch_ms == Settings.model_fields["microbatch_ms"].default and d.to_env() == {}


# --- the CLI: flags take effect, os.environ is never written ----------------------------------------------------


def test_surge_run_flags_reach_every_child_without_touching_os_environ(clean_env: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    clean_env.setenv("SURGE_BROKERS", "127.0.0.1:9")  # external broker and redis: no binaries, nothing started
    clean_env.setenv("SURGE_REDIS_URL", "redis://127.0.0.1:9/0")
    clean_env.setenv("SURGE_SYMBOLS", "AAAUSDT")  # the flag wins
    planned: list[list[ChildSpec]] = []

    def fake_run(self: Supervisor, on_ready: object = None) -> int:
        planned.append([c.spec for c in self.children])
        return 0

    clean_env.setattr(Supervisor, "run", fake_run)
    before = dict(os.environ)
    result = CliRunner().invoke(app, ["run", "--source", "sim", "--symbols", "BTCUSDT,ETHUSDT", "--rate", "50",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    (children,) = planned
    assert {c.name for c in children} >= {"warehouse", "ingest", "features", "gateway"}
    env = children[0].env
    assert all(c.env == env for c in children)
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is inherited
    child = env_from(env, clean_env)
    assert (child.source, child.symbols, child.sim_events_per_s, child.data_dir) == (
        "sim", "BTCUSDT,ETHUSDT", 50.0, tmp_path)
    assert child.brokers == "127.0.0.1:9" and child.warehouse_token is not None


def test_surge_run_replay_children_drop_backpressure_unless_set(clean_env: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from services.stack.supervisor import child_settings

    s = Settings.with_overrides(data_dir=tmp_path)
    assert child_settings(s, "replay:/c").features_backpressure_lag_s == 0
    assert child_settings(s, "sim").features_backpressure_lag_s == s.features_backpressure_lag_s
    assert child_settings(Settings(features_backpressure_lag_s=7.0), "replay:/c").features_backpressure_lag_s == 7.0
    assert "SURGE_SOURCE" not in s.to_env() and child_settings(s, "sim").to_env()["SURGE_SOURCE"] == "sim"


@pytest.mark.parametrize("argv", [
    ["stage", "ingest", "--source", "replay:/captures", "--venue", "usdm", "--symbols", "ETHUSDT", "--speed", "max"],
    ["ingest", "--source", "replay:/captures", "--venue", "usdm", "--symbols", "ETHUSDT", "--speed", "max",
     "--no-exit-when-done"],
])
def test_stage_and_ingest_flags_take_effect_without_touching_os_environ(clean_env: pytest.MonkeyPatch,
                                                                         argv: list[str]) -> None:
    import streams.runtime.source

    seen: list[Settings] = []

    def fake_run(spec: object, settings: Settings) -> int:
        seen.append(settings)
        return 0

    clean_env.setattr(streams.runtime.source, "run_source", fake_run)
    clean_env.setenv("SURGE_VENUE", "spot")  # the flag wins
    before = dict(os.environ)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    (s,) = seen
    assert (s.source, s.venue, s.symbols, s.replay_speed, s.replay_exit) == (
        "replay:/captures", "usdm", "ETHUSDT", "max", False)


def test_an_invalid_flag_is_a_settings_error_and_leaves_os_environ_alone(clean_env: pytest.MonkeyPatch) -> None:
    before = dict(os.environ)
    result = CliRunner().invoke(app, ["stage", "ingest", "--venue", "margin"])
    assert result.exit_code == 2 and "invalid settings" in result.output
    assert dict(os.environ) == before


# --- the batch drivers take settings -----------------------------------------------------------------------------


def trades_capture(path: Path, n: int = 400, step_us: int = 5_000) -> Path:
    """A spot trade stream, one trade every 5 ms: the micro-batch window decides how many TickBatches it makes."""
    t0 = 1_700_000_000_000_000
    lines = []
    for i in range(n):
        us = t0 + i * step_us
        data = {"e": "trade", "E": us // 1000, "T": us // 1000, "s": "BTCUSDT", "t": 1000 + i,
                "p": f"{100 + 0.01 * (i % 7):.2f}", "q": "0.1", "m": i % 2 == 0, "M": True}
        lines.append(f"{us} ".encode() + orjson.dumps({"stream": "btcusdt@trade", "data": data}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_batch_drivers_use_the_settings_given_and_never_read_the_environment(clean_env: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    capture = [trades_capture(tmp_path / "btcusdt_trades.txt")]
    clean_env.setenv("SURGE_MICROBATCH_MS", "10")
    clean_env.setenv("SURGE_NOT_A_SETTING", "1")  # Settings() would refuse to build here
    with pytest.raises(ValidationError):
        Settings()
    default = list(capture_batches(capture))  # no settings: the defaults (20 ms), not SURGE_MICROBATCH_MS
    assert len(default) == 400 * 5_000 // 20_000
    fine = Settings.defaults().model_copy(update={"microbatch_ms": 10})
    assert len(list(capture_batches(capture, settings=fine))) == 2 * len(default)
    assert len(compute_capture_frame(capture, settings=fine)) == 2 * len(compute_capture_frame(capture))
    assert len(compute_inputs_frame(capture, settings=fine)) == 2 * len(default)


def test_features_compute_passes_the_environment_settings_to_the_driver(clean_env: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    import pandas as pd

    capture = trades_capture(tmp_path / "btcusdt_trades.txt")
    out = tmp_path / "features.parquet"
    clean_env.setenv("SURGE_MICROBATCH_MS", "10")  # the CLI entry point reads it and hands it down
    result = CliRunner().invoke(app, ["features", "compute", "--input", str(capture), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) == 400 * 5_000 // 10_000
    clean_env.setenv("SURGE_NOT_A_SETTING", "1")
    result = CliRunner().invoke(app, ["features", "compute", "--input", str(capture), "--output", str(out)])
    assert result.exit_code == 2 and "invalid settings" in result.output
