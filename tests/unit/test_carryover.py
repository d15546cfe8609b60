"""The carry-over policy that the features checkpoint and the simulator prices share (streams.runtime.carryover)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.runtime import carryover

pytestmark = pytest.mark.unit

S = 1_000_000


def test_a_saved_file_is_read_once_and_is_gone_after(tmp_path: Path) -> None:
    path = tmp_path / "stage" / "state.bin"
    carryover.write_atomically(path, b"saved state")
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.bin"]  # no partial file left behind
    assert carryover.take(path) == b"saved state"
    assert not path.exists()
    assert carryover.take(path) is None  # a second start finds nothing


def test_a_second_save_replaces_the_first_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    carryover.write_atomically(path, b"first, and longer than the second")
    carryover.write_atomically(path, b"second")
    assert carryover.take(path) == b"second"


def test_an_unreadable_path_raises_oserror_for_the_caller_to_report(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.mkdir()  # tried: a folder where the file should be, so reading it fails
    (path / "inside").write_bytes(b"x")
    with pytest.raises(OSError):
        carryover.take(path)


@pytest.mark.parametrize(("age_s", "usable"), [(0, True), (120, True), (121, False), (-1, False)])
def test_age_limit_is_inclusive_and_a_save_from_the_future_is_refused(age_s: int, usable: bool) -> None:
    now = 1_777_593_600 * S
    reason = carryover.too_old(now - age_s * S, now, 120 * S)
    assert (reason is None) is usable
    if not usable:
        assert reason == f"saved {age_s} s ago (limit 120 s)"
