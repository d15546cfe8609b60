"""Model artifacts shipped inside the ``streams`` package, so an installed wheel has them too.

* ``default/``: the bootstrap model a fresh install registers and activates, trained on the simulator by
  ``python -m services.training.default_model`` (its default ``--out`` is this folder).
* ``btcusdt-klines/``: the research model trained on real Binance BTCUSDT klines (see its ``README.md``).

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

SHIPPED = ("default", "btcusdt-klines")


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
