"""A latest-wins hand-off between threads: holds at most one item, a new put replaces the old.

Live stages must never queue stale frames: a producer faster than its consumer overwrites the
pending item (counted as dropped) instead of growing a backlog that turns into latency.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Thread-safe single-item slot; `close()` wakes every waiting consumer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._puts = 0
        self._dropped = 0

    def put(self, item: T) -> bool:
        """Store `item`, replacing any unread one; return False (and drop it) once closed."""
        with self._cond:
            if self._closed:
                return False
            if self._full:
                self._dropped += 1
            self._item, self._full = item, True
            self._puts += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Take the newest item, waiting up to `timeout` seconds (None: forever).

        Returns None on timeout, or when the slot is closed and empty.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._full and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> int:
        """Drop the unread item, if any (e.g. on a reset); return how many were dropped (0 or 1)."""
        with self._cond:
            had = int(self._full)
            self._item, self._full = None, False
            self._dropped += had
            return had

    def close(self) -> None:
        """Refuse further puts and wake all consumers; an unread item can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def puts(self) -> int:
        """Items accepted so far."""
        with self._cond:
            return self._puts

    @property
    def dropped(self) -> int:
        """Items overwritten or cleared before any consumer took them."""
        with self._cond:
            return self._dropped

    def __len__(self) -> int:
        with self._cond:
            return int(self._full)
