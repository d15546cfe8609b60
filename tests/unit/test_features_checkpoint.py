"""The features stage's windows carried across a clean stop (streams/features/checkpoint.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streams.features import checkpoint
from streams.features.core import FeatureState
from streams.runtime.clock import ManualClock
from tests.unit.test_features_core import T0, random_walk, run, vectors

pytestmark = pytest.mark.unit

S = 1_000_000


def test_a_resumed_state_computes_the_same_vectors_as_one_that_never_stopped(tmp_path: Path) -> None:
    """Tried: 2 symbols x 3,000 batches (60 s), a save and load after the first 2,000 of them."""
    batches = list(random_walk(3_000))
    head, tail = batches[:4_000], batches[4_000:]
    clock = ManualClock(T0 + 3_600 * S)
    straight, stopped = FeatureState(), FeatureState()
    run(head, straight, clock)
    run(head, stopped, clock)
    path = tmp_path / "windows.npz"
    assert checkpoint.save(path, stopped, clock.now_us()) == 2
    clock.advance_us(5 * S)
    resumed = FeatureState()
    assert checkpoint.load(path, resumed, clock.now_us(), 120 * S) == 2
    assert not path.exists()  # used once: a later crash-restart rebuilds from the stream
    expected = [v.SerializeToString() for v in vectors(run(tail, straight, clock))]
    assert [v.SerializeToString() for v in vectors(run(tail, resumed, clock))] == expected
    assert len(expected) == 2_000


def test_a_stale_or_foreign_checkpoint_is_not_resumed_and_is_removed(tmp_path: Path) -> None:
    """Tried: a checkpoint 121 s old with a 120 s limit; one from another feature version; a corrupt file; a
    truncated one; one whose arrays have the wrong shape."""
    clock = ManualClock(T0 + 3_600 * S)
    state = FeatureState()
    run(list(random_walk(10)), state, clock)
    path = tmp_path / "windows.npz"

    checkpoint.save(path, state, clock.now_us() - 121 * S)
    assert checkpoint.load(path, FeatureState(), clock.now_us(), 120 * S) == 0
    assert not path.exists()

    checkpoint.save(path, state, clock.now_us())
    with np.load(path) as saved:
        arrays = dict(saved)
    meta = json.loads(bytes(arrays["meta"]).decode())
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "feature_version": "0ld"}).encode(), np.uint8)
    np.savez(path, **arrays)
    assert checkpoint.load(path, FeatureState(), clock.now_us(), 120 * S) == 0

    path.write_bytes(b"not an npz file")
    assert checkpoint.load(path, FeatureState(), clock.now_us(), 120 * S) == 0
    assert not path.exists()

    checkpoint.save(path, state, clock.now_us())
    path.write_bytes(path.read_bytes()[:4_000])  # cut short, as by a full disk: still starts like a zip
    assert checkpoint.load(path, FeatureState(), clock.now_us(), 120 * S) == 0
    assert not path.exists()

    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["1.ring_x"] = np.zeros((3, 3))  # the second symbol: the first must not be adopted alone
    np.savez(path, **arrays)
    fresh = FeatureState()
    assert checkpoint.load(path, fresh, clock.now_us(), 120 * S) == 0
    assert fresh.symbols() == {}

