"""Connection caps enforced before the upgrade."""

from __future__ import annotations

from collections import Counter


class ConnectionLimiter:
    """Counts open connections per client address and refuses those over the cap."""

    def __init__(self, per_ip: int) -> None:
        self._per_ip = per_ip
        self._open: Counter[str] = Counter()

    def acquire(self, ip: str) -> bool:
        if self._open[ip] >= self._per_ip:
            return False
        self._open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        remaining = self._open[ip] - 1
        if remaining > 0:
            self._open[ip] = remaining
        else:
            self._open.pop(ip, None)

    def open_connections(self, ip: str) -> int:
        return self._open[ip]
