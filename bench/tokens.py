"""The tokens load clients present to the service, signed with the secret it is started with."""

from __future__ import annotations

import functools

from app.admission.auth import issue_token
from bench.servers import SECRET


@functools.cache
def token(index: int) -> str:
    return issue_token(SECRET, user_id=f"u{index}", username=f"User {index}", ttl=6 * 3600)
