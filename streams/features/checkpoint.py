"""Carry the features stage's per-symbol windows across a clean stop, e.g. the embedded broker's recycle.

A clean stop (``StageSpec.on_close``, after the last batch is committed) writes every symbol's kernel arrays to
one ``.npz`` file; the next start loads them if they are this feature version's and at most ``max_age_us`` old
by the clock, then deletes the file, so a later crash-restart rebuilds from the stream as before
(``streams.runtime.carryover``, the policy ingest's simulator prices follow too). Without this a recycle
empties the minute windows, which take up to an hour to refill. Plain arrays (``allow_pickle=False``): loading
the file runs no code.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from streams.features import definitions as d
from streams.features.core import FeatureState, SymbolState
from streams.runtime import carryover

log = logging.getLogger("surge.features")

FIELDS = d.KernelState._fields


def save(path: Path, state: FeatureState, saved_at_us: int) -> int:
    """Write every symbol's kernel to ``path`` (atomically); returns the number of symbols written."""
    symbols = state.symbols()
    arrays: dict[str, np.ndarray] = {}
    keys = []
    for i, ((venue, symbol), st) in enumerate(symbols.items()):
        keys.append([venue, symbol])
        for name in FIELDS:
            arrays[f"{i}.{name}"] = getattr(st.kernel, name)
    meta = {"feature_version": d.FEATURE_VERSION, "saved_at_us": saved_at_us, "keys": keys}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as ArrayLike only loosely
    carryover.write_atomically(path, buffer.getvalue())
    return len(keys)


def load(path: Path, state: FeatureState, now_us: int, max_age_us: int) -> int:
    """Put the saved kernels into ``state`` if fresh and of this feature version; the file is removed either way.
    Returns the number of symbols restored (0 when none was usable, with the reason logged)."""
    try:
        data = carryover.take(path)
        if data is None:
            return 0
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            meta = json.loads(bytes(saved["meta"]).decode())
            if meta["feature_version"] != d.FEATURE_VERSION:
                log.info("not resuming windows saved by feature version %s", meta["feature_version"])
                return 0
            stale = carryover.too_old(int(meta["saved_at_us"]), now_us, max_age_us)
            if stale is not None:
                log.info("not resuming windows %s", stale)
                return 0
            restored: list[tuple[int, str, SymbolState]] = []
            for i, (venue, symbol) in enumerate(meta["keys"]):
                fresh = d.new_kernel_state()
                st = SymbolState()
                st.kernel = d.KernelState(*(_checked(saved[f"{i}.{name}"], getattr(fresh, name)) for name in FIELDS))
                restored.append((int(venue), str(symbol), st))
            for venue, symbol, st in restored:  # all or nothing
                state.adopt(venue, symbol, st)
            log.info("resumed the windows of %d symbol(s) saved %.1f s ago", len(meta["keys"]),
                     (now_us - int(meta["saved_at_us"])) / 1e6)
            return len(meta["keys"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a truncated file is a BadZipFile
        log.warning("ignoring unreadable features checkpoint %s: %s", path, exc)
        return 0


def _checked(saved: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
        raise ValueError(f"array {saved.shape} {saved.dtype} where {fresh.shape} {fresh.dtype} was expected")
    return np.ascontiguousarray(saved)
