"""TokenBucket and StrikeCounter, driven by explicit clock values."""

from __future__ import annotations

from app.session.ratelimit import StrikeCounter, TokenBucket


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.05) is False  # half a token
    assert bucket.allow(0.1) is True
    assert bucket.allow(0.1) is False


def test_bucket_never_holds_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=2, now=0.0)
    assert [bucket.allow(1000.0) for _ in range(3)] == [True, True, False]


def test_strikes_count_only_within_the_window() -> None:
    counter = StrikeCounter(limit=3, window=10.0)
    assert counter.strike(0.0) is False
    assert counter.strike(1.0) is False
    assert counter.strike(11.5) is False  # the strike at 0.0 and 1.0 aged out
    assert counter.strike(12.0) is False
    assert counter.strike(13.0) is True
