"""Purged k-fold cross-validation with an embargo (López de Prado, AFML ch. 7).

Each sample i is known by its label span [start_i, end_i] (bar indices or times). Folds are contiguous
blocks of samples in time. A training sample is purged when its span overlaps the test fold's span, and
embargoed when it starts within ``embargo`` after the test fold ends, since serially correlated features
would otherwise leak the test labels into training.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def purged_kfold(
    start: IntArray, end: IntArray, n_splits: int = 5, embargo: int = 0
) -> Iterator[tuple[IntArray, IntArray]]:
    """Yield (train_idx, test_idx); samples must be sorted by start."""
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    n = start.shape[0]
    if n_splits < 2 or n_splits > n:
        raise ValueError(f"n_splits must be in [2, {n}], got {n_splits}")
    if np.any(np.diff(start) < 0):
        raise ValueError("samples must be sorted by label start")
    if np.any(end < start):
        raise ValueError("a label cannot end before it starts")
    bounds = np.linspace(0, n, n_splits + 1).astype(np.int64)
    all_idx = np.arange(n, dtype=np.int64)
    for k in range(n_splits):
        test = all_idx[bounds[k]:bounds[k + 1]]
        test_start = start[test].min()
        test_end = end[test].max()
        overlaps = (start <= test_end) & (end >= test_start)
        embargoed = (start > test_end) & (start <= test_end + embargo)
        train_mask = ~overlaps & ~embargoed
        train_mask[test] = False
        yield all_idx[train_mask], test
