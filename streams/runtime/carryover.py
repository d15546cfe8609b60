"""State a stage carries over a clean stop to its next start (the embedded broker's recycle): one policy for all.

* written atomically (a partial file, then a rename), so a crash while saving leaves no half file;
* stamped with the clock's time when saved, and used only if at most ``max_age_us`` old by the next start's clock;
* used at most once: ``take`` removes the file as it reads it, so a later crash-restart starts as if nothing had
  been saved (a crash leaves no fresh file behind, and an old one must not be mistaken for the crash's state).
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def take(path: Path) -> bytes | None:
    """The saved bytes, removing the file; None when nothing was saved. Raises OSError when it cannot be read.
    The file is removed whether or not it could be read; a file that cannot be removed either (no permission)
    stays, and is refused by age on a later start."""
    if not path.exists():
        return None
    try:
        return path.read_bytes()
    finally:
        with contextlib.suppress(OSError):  # the read's own error, if any, is the one to report
            path.unlink(missing_ok=True)


def too_old(saved_at_us: int, now_us: int, max_age_us: int) -> str | None:
    """Why a file saved at ``saved_at_us`` must not be used at ``now_us`` (None: it may). A save from the clock's
    future is refused too: the clock went back, so its age is unknown."""
    age_us = now_us - saved_at_us
    if 0 <= age_us <= max_age_us:
        return None
    return f"saved {age_us / 1e6:.0f} s ago (limit {max_age_us / 1e6:.0f} s)"
