"""The venue package's boundaries: the ingest core is venue-neutral; replay, the features batch driver and the
loopback exchange run without the WebSocket client (``streams.venues.binance.ws``); the ping path has one home."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.stack import supervisor
from streams.ingest import stage
from streams.runtime.settings import Settings
from streams.venues.binance.spec import venue_spec
from tests.conftest import REPO_ROOT
from tests.unit.test_layering import imported_modules

pytestmark = pytest.mark.unit

WS = "streams.venues.binance.ws"
# Modules that must work without the WebSocket client (it is the live feed's alone).
WITHOUT_WS = ("streams/ingest/replay.py", "streams/features/batch.py", "services/testing/fake_exchange")
# The venue-neutral core: normalised events in, TickBatches out.
VENUE_NEUTRAL = ("streams/ingest/core.py", "streams/ingest/events.py", "streams/ingest/book.py",
                 "streams/ingest/quality.py")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, ``from a.b import c`` counted as both ``a.b`` and ``a.b.c`` (c may be one)."""
    found = list(imported_modules(path))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def files(*relative: str) -> list[Path]:
    out: list[Path] = []
    for rel in relative:
        path = REPO_ROOT / rel
        assert path.exists(), rel
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def offending(paths: list[Path], prefix: str) -> list[str]:
    return [f"{p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p.name}:{line} imports {module}"
            for p in paths for line, module in imports(p) if module == prefix or module.startswith(prefix + ".")]


def test_replay_batch_driver_and_fake_exchange_do_not_import_the_websocket_module() -> None:
    assert offending(files(*WITHOUT_WS), WS) == []


def test_the_ingest_core_imports_no_venue() -> None:
    assert offending(files(*VENUE_NEUTRAL), "streams.venues") == []


def test_the_checker_sees_modules_imported_by_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from streams.venues.binance import ws\n    import streams.venues.binance.ws\n",
                      encoding="utf-8")
    assert offending([module], WS) == [f"m.py:3 imports {WS}", f"m.py:2 imports {WS}"]


def test_importing_them_loads_no_websocket_client() -> None:
    """Transitively too: the venue package's ``__init__`` modules must not drag the network modules in."""
    code = ("import sys; import streams.ingest.replay, streams.features.batch, services.testing.fake_exchange.server;"
            "from streams.features.batch import capture_batches;"
            f"print({WS!r} in sys.modules, 'streams.venues.binance.feed' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                            timeout=120)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("venue", ["spot", "usdm"])
def test_supervisor_and_ingest_stage_probe_the_venue_specs_ping(venue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``surge run`` and ``surge ingest --source auto`` decide live vs sim on one URL: the venue spec's ping path."""
    asked: list[str] = []

    def unreachable(url: str, **_: object) -> httpx.Response:
        asked.append(url)
        raise httpx.ConnectError("no network in unit tests")

    monkeypatch.setattr(httpx, "get", unreachable)
    settings = Settings(source="auto", venue=venue, binance_rest_url="http://spot.invalid",
                        binance_futures_rest_url="http://usdm.invalid")
    assert supervisor.resolve_source(settings) == "sim" and stage.resolve_source(settings) == "sim"
    ping = f"http://{venue}.invalid{venue_spec(venue).ping_path}"
    assert asked == [ping, ping]
