"""The wheel works on its own: built from the working tree, installed into a fresh venv, run away from the
checkout. Models, DDL and the dashboard page are package data, so nothing may be looked up in the source tree.

The fresh venv has no pip and no third-party packages of its own: a ``.pth`` file appends the project venv's
site-packages for the heavy dependencies (onnxruntime, numpy, ...). Plain path lines in a ``.pth`` are not
themselves scanned for ``.pth`` files, so the project's editable-install finder is never loaded, and the fresh
venv's own site-packages comes first: ``streams``, ``services`` and ``schemas`` are the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "streams" / "infer" / "artifacts"

PROBE = r"""
import json, sys
from importlib import resources

import numpy as np

import schemas, services, streams
from streams.infer.artifacts import SHIPPED, shipped
from streams.infer.model import load_model
from streams.infer.stage import default_model_dir
from streams.storage.schema import table_columns

model = load_model(default_model_dir())
nan = model.predict(np.full((1, model.n_features), np.nan))
zero = model.predict(np.zeros((1, model.n_features)))
print(json.dumps({
    "files": [streams.__file__, services.__file__, schemas.__file__],
    "default_dir": str(default_model_dir()),
    "default_version": model.model_version,
    "p_up": [float(p) for p in [*nan.p_up[0], *zero.p_up[0]]],
    "shipped": {name: load_model(shipped(name)).model_version for name in SHIPPED},
    "tables": sorted(table_columns()),
    "dashboard": len((resources.files("services.gateway") / "static" / "index.html").read_text()),
    "path": sys.path,
}))
"""


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def copy_source(dst: Path) -> Path:
    """What the wheel is built from, copied so the build writes its build/ and egg-info outside the checkout."""
    src = dst / "src"
    for package in ("streams", "services", "schemas"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    return src


def shipped_version(name: str) -> str:
    version = json.loads((ARTIFACTS / name / "model.json").read_text())["model_version"]
    assert isinstance(version, str)
    return version


def test_installed_wheel_runs_and_loads_the_shipped_models(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

    built = run([*pip, "wheel", str(copy_source(tmp_path)), "--no-deps", "--no-build-isolation", "--no-index",
                 "--no-cache-dir", "-w", str(tmp_path / "dist")], tmp_path, env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("surge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [f"streams/infer/artifacts/{d.name}/{f.name}" for d in ARTIFACTS.iterdir() if d.is_dir()
            for f in d.iterdir() if f.is_file()]
    data += [f"schemas/clickhouse/{f.name}" for f in (REPO_ROOT / "schemas" / "clickhouse").glob("*.sql")]
    data += ["services/gateway/static/index.html"]
    assert len(data) > 12 and sorted(set(data) - names) == []

    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so pip sees no other surge (the project's editable one) to replace.
    installed = run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "--no-cache-dir",
                     str(wheel)], tmp_path, env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = Path(run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    tmp_path, env).stdout.strip())
    assert site.is_relative_to(venv)
    (site / "surge-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    helped = run([str(venv / "bin" / "surge"), "run", "--help"], tmp_path, {**env, "COLUMNS": "200"})
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "--source" in helped.stdout

    probed = run([str(python), "-I", "-c", PROBE], tmp_path, env)
    assert probed.returncode == 0, probed.stderr
    out = json.loads(probed.stdout.splitlines()[-1])
    assert all(Path(f).is_relative_to(site) for f in out["files"]), out["files"]
    assert not any(Path(p) == REPO_ROOT for p in out["path"]), out["path"]
    assert out["default_dir"] == str(site / "streams" / "infer" / "artifacts" / "btcusdt-klines")
    assert out["default_version"] == shipped_version("btcusdt-klines")
    assert out["shipped"] == {d.name: shipped_version(d.name) for d in ARTIFACTS.iterdir() if d.is_dir()}
    assert all(0.0 <= p <= 1.0 for p in out["p_up"]) and len(out["p_up"]) == 6
    assert {"signals", "model_versions", "audit_logs"} <= set(out["tables"])
    assert out["dashboard"] > 1000

    # The docs generator writes the checkout's docs/; installed, there is none, so it asks for --out.
    refused = run([str(venv / "bin" / "surge"), "features", "docs"], tmp_path, env)
    assert refused.returncode != 0 and "--out" in refused.stderr
    written = run([str(venv / "bin" / "surge"), "features", "docs", "--out", str(tmp_path / "features.md")],
                  tmp_path, env)
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "features.md").read_text().startswith("# Features")
