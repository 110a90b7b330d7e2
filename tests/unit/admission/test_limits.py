"""ConnectionLimiter: a per-address cap on open connections."""

from __future__ import annotations

from app.admission.limits import ConnectionLimiter


def test_acquire_succeeds_up_to_the_cap() -> None:
    limiter = ConnectionLimiter(limit=2)

    assert limiter.acquire("10.0.0.1")
    assert limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")
    assert limiter.open_connections("10.0.0.1") == 2


def test_refused_acquire_takes_no_slot() -> None:
    limiter = ConnectionLimiter(limit=1)
    limiter.acquire("10.0.0.1")

    assert not limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")
    assert limiter.open_connections("10.0.0.1") == 1


def test_addresses_are_counted_separately() -> None:
    limiter = ConnectionLimiter(limit=1)

    assert limiter.acquire("10.0.0.1")
    assert limiter.acquire("10.0.0.2")
    assert limiter.acquire("::1")
    assert limiter.open_connections("10.0.0.2") == 1


def test_release_frees_a_slot() -> None:
    limiter = ConnectionLimiter(limit=2)
    limiter.acquire("10.0.0.1")
    limiter.acquire("10.0.0.1")

    limiter.release("10.0.0.1")

    assert limiter.open_connections("10.0.0.1") == 1
    assert limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")


def test_releasing_the_last_slot_leaves_none_open() -> None:
    limiter = ConnectionLimiter(limit=1)
    limiter.acquire("10.0.0.1")

    limiter.release("10.0.0.1")

    assert limiter.open_connections("10.0.0.1") == 0
    assert limiter.acquire("10.0.0.1")


def test_unknown_address_has_no_open_connections() -> None:
    assert ConnectionLimiter(limit=5).open_connections("192.0.2.1") == 0


def test_releasing_an_unknown_address_changes_nothing() -> None:
    limiter = ConnectionLimiter(limit=1)
    limiter.acquire("10.0.0.1")

    limiter.release("10.0.0.2")

    assert limiter.total == 1
    assert limiter.open_connections("10.0.0.1") == 1


def test_the_total_and_its_peak_count_every_address() -> None:
    limiter = ConnectionLimiter(limit=5)
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        limiter.acquire(address)
    limiter.acquire("10.0.0.3")
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limiter.release(address)

    assert limiter.total == 1
    assert limiter.take_peak() == 4  # all four were open at once, then three closed
    assert limiter.take_peak() == 1  # since the last call: only the one still open
    assert limiter.acquire("10.0.0.1")
    assert limiter.take_peak() == 2
