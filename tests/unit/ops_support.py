"""Helpers for the operations tests: the metric names the code exports, PromQL metric names, a promtool runner."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"

# Metrics a rule or panel expects that no code exports yet (another change adds them); each is named in a
# comment next to its rule. A test fails once one is exported, so the list cannot go stale.
PENDING_METRICS: frozenset[str] = frozenset()
# Series Prometheus itself writes for every target.
PROMETHEUS_BUILTINS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_CONSTRUCTOR = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily|HistogramMetricFamily)"
    r"\(\s*\"(surge_[a-z0-9_]+)\"")
_LITERAL = re.compile(r"\"(surge_[a-z0-9_]+)\"")
_SUFFIXES = {
    "Counter": ("_total",), "CounterMetricFamily": ("_total",),
    "Gauge": ("",), "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count"), "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count"),
}


def exported_metrics() -> frozenset[str]:
    """Every series name the stages can expose, read from the metric-creating source.

    A name passed straight to a constructor gets that type's suffixes; a name in a table that a loop hands
    to a constructor (ingest's quality counters, outcomes' gauges) gets both the bare and the ``_total`` form.
    """
    names: set[str] = set()
    for root in ("streams", "services"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            text = path.read_text()
            if "prometheus_client" not in text:
                continue
            direct = set()
            for kind, name in _CONSTRUCTOR.findall(text):
                direct.add(name)
                names.update(name + suffix for suffix in _SUFFIXES[kind])
            for name in set(_LITERAL.findall(text)) - direct:
                names.update((name, name + "_total"))
    return frozenset(names)


_PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "le", "inf", "nan",
})


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers not followed by ``(``, outside label matchers,
    grouping clauses, strings and durations."""
    text = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'", "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\$\w+", "1", text)
    found = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text):
        name = match.group(1)
        if name.lower() in _PROMQL_KEYWORDS or ":" in name:
            continue
        found.add(name)
    return found


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make system-deps` installs it)")
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)
