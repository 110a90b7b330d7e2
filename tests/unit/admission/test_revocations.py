"""Revocations: the tokens issued before a revocation stay refused for its memory, no longer."""

from __future__ import annotations

import pytest

from app.admission import revocations as module
from app.admission.revocations import Revocations


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_issued_before_the_revocation_are_refused_later_ones_admitted() -> None:
    clock = Clock()
    revoked = Revocations(60.0, clock)
    revoked.revoke("p1", "alice")

    assert revoked.refuses("p1", "alice", issued_at=999.0)
    assert revoked.refuses("p1", "alice", issued_at=1_000.0)
    assert revoked.refuses("p1", "alice", issued_at=None)
    assert not revoked.refuses("p1", "alice", issued_at=1_001.0)
    assert not revoked.refuses("p2", "alice", issued_at=999.0)
    assert not revoked.refuses("p1", "bob", issued_at=999.0)


def test_a_revocation_is_forgotten_after_its_memory() -> None:
    clock = Clock()
    revoked = Revocations(60.0, clock)
    revoked.revoke("p1", "alice")
    clock.now += 61.0

    assert not revoked.refuses("p1", "alice", issued_at=999.0)
    revoked.revoke("p1", "bob")
    assert len(revoked) == 1, "the expired entry is dropped by the next revocation"


def test_a_second_revocation_moves_the_horizon() -> None:
    clock = Clock()
    revoked = Revocations(60.0, clock)
    revoked.revoke("p1", "alice")
    clock.now += 10.0
    revoked.revoke("p1", "alice")

    assert revoked.refuses("p1", "alice", issued_at=1_005.0)
    assert len(revoked) == 1


def test_the_oldest_revocations_go_first_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    revoked = Revocations(3_600.0, clock)
    monkeypatch.setattr(module, "MAX_REVOCATIONS", 3)
    for user in ("a", "b", "c", "d"):
        clock.now += 1.0
        revoked.revoke("p1", user)

    assert len(revoked) == 3
    assert not revoked.refuses("p1", "a", issued_at=0.0)
    assert revoked.refuses("p1", "d", issued_at=0.0)
