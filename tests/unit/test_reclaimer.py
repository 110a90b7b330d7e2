"""The Reclaimer: when a drop in connections is worth a reclaim, and its task's life."""

from __future__ import annotations

import logging

import pytest

from app.admission.limits import ConnectionLimiter
from app.reclaimer import Reclaimer
from tests.support.waiting import eventually


class Gate:
    accepting = True


class Census(ConnectionLimiter):
    """The admission's limiter, which counts how often the reclaimer read it."""

    def __init__(self) -> None:
        super().__init__(limit=10_000)
        self.reads = 0

    def take_peak(self) -> int:
        self.reads += 1
        return super().take_peak()

    def open(self, count: int) -> None:
        for index in range(count):
            self.acquire(f"10.0.0.{index % 250}")

    def close(self, count: int) -> None:
        for index in range(count):
            self.release(f"10.0.0.{index % 250}")

    async def read_again(self, times: int = 2) -> None:
        """Wait until the reclaimer has read the counts `times` more times."""
        target = self.reads + times

        async def read() -> bool:
            return self.reads >= target

        await eventually(read)


def reclaimer(min_interval: float = 60.0, min_drop: int = 100) -> Reclaimer:
    return Reclaimer(Census(), Gate(), min_interval, min_drop=min_drop)


def test_a_drop_is_reclaimed_once_the_count_stops_falling() -> None:
    watcher = reclaimer()
    assert watcher.due(500, 500, 0.0) is False  # rising
    assert watcher.due(200, 500, 2.0) is False  # falling by 300
    assert watcher.due(195, 200, 4.0) is True  # down 305 from the peak, and no longer falling


def test_a_peak_between_two_checks_counts() -> None:
    watcher = reclaimer()
    assert watcher.due(0, 0, 0.0) is False
    assert watcher.due(0, 400, 2.0) is True  # 400 came and went within one check


def test_a_small_drop_is_not_worth_a_reclaim() -> None:
    watcher = reclaimer()
    watcher.due(500, 500, 0.0)
    assert watcher.due(401, 500, 2.0) is False
    assert watcher.due(401, 401, 4.0) is False


def test_a_slow_decline_counts_as_quiet() -> None:
    # Less than a tenth of min_drop per check is not "still falling": a room emptying one
    # person at a time still gets its reclaim.
    watcher = reclaimer()
    watcher.due(500, 500, 0.0)
    count, now, due = 500, 0.0, False
    while not due:
        count -= 9
        now += 2.0
        due = watcher.due(count, count + 9, now)
    assert count == 500 - 9 * 12  # the first check at least min_drop below the peak


def test_reclaims_are_at_least_min_interval_apart() -> None:
    watcher = reclaimer(min_interval=60.0)
    watcher.due(500, 500, 0.0)
    watcher.due(0, 500, 2.0)
    assert watcher.due(0, 0, 4.0) is True
    watcher.reclaim(0, 4.0)
    watcher.due(0, 500, 6.0)
    assert watcher.due(0, 0, 10.0) is False
    assert watcher.due(0, 0, 64.0) is True


def test_the_peak_starts_again_after_a_reclaim() -> None:
    watcher = reclaimer(min_interval=1.0)
    watcher.due(500, 500, 0.0)
    watcher.due(300, 500, 2.0)
    watcher.reclaim(300, 4.0)
    assert watcher.due(300, 300, 6.0) is False  # the same 200 below the old peak counts once
    watcher.due(250, 350, 8.0)
    assert watcher.due(249, 250, 10.0) is True  # 101 below the new peak of 350


def test_a_reclaim_logs_what_it_did(caplog: pytest.LogCaptureFixture) -> None:
    watcher = reclaimer()
    with caplog.at_level(logging.INFO, logger="texflow.reclaimer"):
        watcher.reclaim(7, 1.0)
    (record,) = [r for r in caplog.records if r.name == "texflow.reclaimer"]
    assert record.__dict__["event"] == "memory_reclaimed"
    assert record.__dict__["connections"] == 7
    assert record.__dict__["duration_ms"] >= 0
    assert watcher.reclaims == 1


@pytest.mark.anyio
async def test_the_task_reclaims_after_a_flood_and_stops_when_told() -> None:
    census = Census()
    watcher = Reclaimer(census, Gate(), min_interval=0.01, check_every=0.01, min_drop=100)
    await watcher.start()
    try:
        await census.read_again()
        census.open(300)
        census.close(300)  # before the reclaimer looked

        async def reclaimed() -> bool:
            return watcher.reclaims == 1

        await eventually(reclaimed)
    finally:
        await watcher.stop()


@pytest.mark.anyio
async def test_no_reclaim_while_draining() -> None:
    census, gate = Census(), Gate()
    gate.accepting = False
    watcher = Reclaimer(census, gate, min_interval=0.01, check_every=0.01, min_drop=100)
    await watcher.start()
    try:
        census.open(300)
        await census.read_again()
        census.close(300)
        await census.read_again(3)  # falling, then quiet twice
    finally:
        await watcher.stop()
    assert watcher.reclaims == 0


@pytest.mark.anyio
async def test_a_zero_interval_turns_it_off() -> None:
    census = Census()
    watcher = Reclaimer(census, Gate(), min_interval=0.0, check_every=0.01)
    await watcher.start()
    await watcher.stop()
    assert watcher.enabled is False
    assert census.reads == 0
