"""Per-connection abuse limits: a token bucket on incoming messages, and strikes in a window."""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; each message takes one."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def allow(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next token, after `allow` said no."""
        return (1.0 - self._tokens) / self._rate


class StrikeCounter:
    """Counts refused messages; `strike` says when `limit` fall within `window` seconds."""

    __slots__ = ("_limit", "_times", "_window")

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        # Created at the first strike: most connections never send a refused message.
        self._times: deque[float] | None = None

    def strike(self, now: float) -> bool:
        times = self._times
        if times is None:
            times = self._times = deque()
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        return len(times) >= self._limit
