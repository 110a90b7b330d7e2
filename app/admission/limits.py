"""Connection caps enforced before the upgrade."""

from __future__ import annotations

from collections import Counter


class ConnectionLimiter:
    """Counts open connections per key (a client address, a user) and refuses those over the
    cap."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, key: str) -> bool:
        if self._open[key] >= self._limit:
            return False
        self._open[key] += 1
        return True

    def release(self, key: str) -> None:
        remaining = self._open[key] - 1
        if remaining > 0:
            self._open[key] = remaining
        else:
            self._open.pop(key, None)

    def open_connections(self, key: str) -> int:
        return self._open[key]
