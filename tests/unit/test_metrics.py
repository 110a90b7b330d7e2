"""Metrics: the per-type message counters, kept in plain ints, scrape as Prometheus counters."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics, TypeCounter


def scraped(metrics: Metrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, sample.labels.get("type", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_message_counts_scrape_as_counters_by_type() -> None:
    metrics = Metrics()
    metrics.sent("cursor_update", 3)
    metrics.sent("cursor_update", 0)
    metrics.sent("cursor_update")
    metrics.received("cursor_update")
    metrics.received("invalid")

    samples = scraped(metrics)
    assert samples[("websocket_messages_sent_total", "cursor_update")] == 4
    assert samples[("websocket_messages_received_total", "cursor_update")] == 1
    assert samples[("websocket_messages_received_total", "invalid")] == 1
    assert samples[("websocket_messages_sent_total", "yjs_update")] == 0
    # Like every prometheus_client Counter: a _created series per label set.
    assert samples[("websocket_messages_sent_created", "cursor_update")] > 0
    assert samples[("websocket_slow_consumer_closes_created", "")] > 0


def test_the_registry_knows_the_collectors_names() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.registry.register(
            TypeCounter("websocket_messages_sent", "again", ["cursor_update"])
        )


def test_a_type_nobody_declared_is_a_bug_not_a_new_series() -> None:
    metrics = Metrics()
    with pytest.raises(KeyError):
        metrics.sent("made_up")
    assert ("websocket_messages_sent_total", "made_up") not in scraped(metrics)
