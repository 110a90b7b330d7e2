"""Metrics: the per-type message counters, kept in plain ints, scrape as Prometheus counters."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics


def scraped(metrics: Metrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, sample.labels.get("type", "")): sample.value
        for family in text_string_to_metric_families(text)
        if family.type == "counter"
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


def test_a_type_nobody_declared_is_a_bug_not_a_new_series() -> None:
    metrics = Metrics()
    with pytest.raises(KeyError):
        metrics.sent("made_up")
    assert ("websocket_messages_sent_total", "made_up") not in scraped(metrics)
