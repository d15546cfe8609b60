"""Model artifacts shipped inside the ``streams`` package, so an installed wheel has them too.

* ``btcusdt-klines/``: the default model, the one a fresh install registers and activates (``make run`` serves
  it): trained on real Binance BTCUSDT klines with features the live stage computes too (see its ``README.md``).
* ``simulator/``: a model trained on the built-in market simulator by ``python -m services.training.default_model``
  (its default ``--out`` is this folder), kept for tests and benchmarks that need a model of the simulator's
  tick-level features; no live default.

They are package data (``[tool.setuptools.package-data]`` in pyproject.toml), located with
``importlib.resources``, never relative to a source checkout.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

SHIPPED = ("btcusdt-klines", "simulator")


def shipped(name: str) -> Path:
    """The folder of the shipped artifact ``name`` as a real filesystem path (onnxruntime and the registry,
    which records the artifact's path, need one)."""
    if name not in SHIPPED:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED)}")
    folder = resources.files(__name__).joinpath(name)
    if isinstance(folder, Path):  # a wheel installs as plain files: the usual case
        return folder
    return _extract(folder, name)  # e.g. a zip import: copy out once, kept for the process's lifetime


def _extract(folder: Traversable, name: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"surge-model-{name}-"))
    atexit.register(shutil.rmtree, out, True)
    for item in folder.iterdir():
        if item.is_file():
            (out / item.name).write_bytes(item.read_bytes())
    return out
