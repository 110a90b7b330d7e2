"""Revoked access remembered: the tokens a user held when it was revoked stay refused."""

from __future__ import annotations

import time
from collections.abc import Callable

# Revocations are rare (a member removed from a project); the bound only keeps a flood of
# them from growing without end. Past it the oldest is forgotten first.
MAX_REVOCATIONS = 100_000
# REVOCATION_MEMORY's default: a day, longer than any session token should live.
DEFAULT_REVOCATION_MEMORY = 86_400.0


class Revocations:
    """(project, user) -> when its access was revoked, on this instance's clock.

    Closing a revoked user's connections is not enough: the token they hold is still valid,
    and the stock y-websocket provider reconnects with it on its own. Every token issued at or
    before the revocation (`iat`) is refused for that project until `memory` has passed; one
    without `iat` counts as issued before it. The web app issues new tokens only to members.
    """

    def __init__(self, memory: float, clock: Callable[[], float] = time.time) -> None:
        self._memory = memory
        self._clock = clock
        # Insertion order is revocation order: the oldest entries are at the front.
        self._revoked: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._revoked)

    def revoke(self, project_id: str, user_id: str) -> None:
        now = self._clock()
        key = (project_id, user_id)
        revoked = self._revoked
        revoked.pop(key, None)
        revoked[key] = now
        self._forget_before(now - self._memory)
        while len(revoked) > MAX_REVOCATIONS:
            del revoked[next(iter(revoked))]

    def refuses(self, project_id: str, user_id: str, issued_at: float | None) -> bool:
        revoked_at = self._revoked.get((project_id, user_id))
        if revoked_at is None or revoked_at < self._clock() - self._memory:
            return False
        return issued_at is None or issued_at <= revoked_at

    def _forget_before(self, horizon: float) -> None:
        revoked = self._revoked
        while revoked:
            key = next(iter(revoked))
            if revoked[key] >= horizon:
                return
            del revoked[key]
