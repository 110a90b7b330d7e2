"""Connection caps enforced before the upgrade."""

from __future__ import annotations

from collections import Counter


class ConnectionLimiter:
    """Counts open connections per key (a client address, a user) and refuses those over the
    cap. It also counts them over every key, with the most open at once: every admitted
    connection passes here, so the memory reclaimer (app/reclaimer.py) sees a flood even if
    it came and went between two of its checks."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: Counter[str] = Counter()
        self.total = 0
        self._peak = 0

    def acquire(self, key: str) -> bool:
        if self._open[key] >= self._limit:
            return False
        self._open[key] += 1
        self.total += 1
        if self.total > self._peak:
            self._peak = self.total
        return True

    def release(self, key: str) -> None:
        if key not in self._open:
            return
        self.total -= 1
        remaining = self._open[key] - 1
        if remaining > 0:
            self._open[key] = remaining
        else:
            del self._open[key]

    def open_connections(self, key: str) -> int:
        return self._open[key]

    def take_peak(self) -> int:
        """The most connections open at once since the last call; counting starts again from
        those open now."""
        peak, self._peak = self._peak, self.total
        return peak
