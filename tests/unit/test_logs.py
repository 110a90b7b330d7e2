"""Log redaction of tokens, and the JSON formatter's one-object-per-line output."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from app.admission.auth import issue_token
from app.logs import JsonFormatter, log_config, redact

JWT = issue_token("log-test-secret-" + "x" * 32, user_id="alice")


# redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /ws/p1?token=abc.def-ghi HTTP/1.1", "GET /ws/p1?token=[redacted] HTTP/1.1"),
        ("/ws/p1?x=1&token=abc&y=2", "/ws/p1?x=1&token=[redacted]&y=2"),
        ("/ws/p1?a=1&access_token=abc", "/ws/p1?a=1&access_token=[redacted]"),
        ("/ws/p1?ACCESS_TOKEN=abc", "/ws/p1?ACCESS_TOKEN=[redacted]"),
        ("/ws/p1?Token=abc'", "/ws/p1?Token=[redacted]'"),
        ("Authorization: Bearer abc.def_ghi-jkl~+/=", "Authorization: Bearer [redacted]"),
        ("authorization: bearer xyz and more", "authorization: bearer [redacted] and more"),
        ("('authorization', 'Bearer xyz')", "('authorization', 'Bearer [redacted]')"),
        ("bad token eyJhbGciOi.eyJzdWIiOi.c2ln here", "bad token [redacted-jwt] here"),
    ],
)
def test_redact_removes_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_removes_a_real_jwt_anywhere() -> None:
    redacted = redact(f"user sent {JWT}, then left")

    assert JWT not in redacted
    assert redacted == "user sent [redacted-jwt], then left"


def test_redact_removes_a_jwt_in_a_query_string() -> None:
    redacted = redact(f"GET /ws/p1?token={JWT} 101")

    assert JWT not in redacted
    assert JWT.split(".")[2] not in redacted


@pytest.mark.parametrize(
    "text",
    [
        "client joined room p1",
        "GET /ws/p1?project=demo&mode=edit 101",
        "tokens=5 tokenizer=x",
        "eyJ alone is not a token",
        "",
    ],
)
def test_redact_keeps_other_text(text: str) -> None:
    assert redact(text) == text


# JsonFormatter


def record(
    message: str,
    *args: object,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    logger = logging.getLogger("texflow.test")
    return logger.makeRecord(
        "texflow.test", logging.WARNING, __file__, 10, message, args, exc_info, extra=extra
    )


def formatted(log_record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(log_record)
    assert "\n" not in line
    entry: dict[str, Any] = json.loads(line)
    return entry


def test_formatter_writes_one_json_object_with_the_standard_fields() -> None:
    entry = formatted(record("room %s has %d clients", "p1", 3))

    assert entry["level"] == "warning"
    assert entry["logger"] == "texflow.test"
    assert entry["message"] == "room p1 has 3 clients"
    assert entry["ts"].endswith("+00:00")
    assert set(entry) == {"ts", "level", "logger", "message"}


def test_formatter_includes_extra_fields() -> None:
    entry = formatted(
        record("joined", extra={"project_id": "p1", "clients": 2, "_private": 1, "obj": object})
    )

    assert entry["project_id"] == "p1"
    assert entry["clients"] == 2
    assert "_private" not in entry
    assert isinstance(entry["obj"], str)


def test_formatter_redacts_tokens_in_arguments() -> None:
    entry = formatted(record('"%s %s" %d', "GET", f"/ws/p1?token={JWT}&x=1", 101))

    assert entry["message"] == '"GET /ws/p1?token=[redacted]&x=1" 101'


def test_formatter_redacts_tokens_in_extra_fields() -> None:
    entry = formatted(record("upgrade", extra={"path": "/ws/p1?access_token=s3cr3t"}))

    assert entry["path"] == "/ws/p1?access_token=[redacted]"


def test_formatter_redacts_tokens_in_exception_text() -> None:
    try:
        raise ValueError(f"could not open /ws/p1?token=s3cr3t with Bearer {JWT}")
    except ValueError:
        exc_info = sys.exc_info()

    line = JsonFormatter().format(record("failed", exc_info=exc_info))
    entry = json.loads(line)

    assert "s3cr3t" not in line
    assert JWT not in line
    assert "ValueError: could not open /ws/p1?token=[redacted]" in entry["exception"]
    assert "Traceback" in entry["exception"]


@pytest.mark.parametrize("separator", ["\t", "\n"], ids=["tab", "newline"])
def test_formatter_redacts_bearer_tokens_after_any_whitespace(separator: str) -> None:
    message = f"Authorization: Bearer{separator}opaque-token-123"
    assert "opaque-token-123" not in redact(message)

    assert "opaque-token-123" not in JsonFormatter().format(record(message))


def test_formatter_keeps_non_ascii_text() -> None:
    assert formatted(record("utilisateur «Zoë» connecté"))["message"] == (
        "utilisateur «Zoë» connecté"
    )


def test_log_config_uses_the_json_formatter_at_the_given_level() -> None:
    config = log_config("debug")

    assert config["formatters"]["json"]["()"] is JsonFormatter
    assert config["loggers"]["texflow"]["level"] == "DEBUG"
    assert config["loggers"]["uvicorn.access"]["handlers"] == ["stdout"]


@pytest.mark.parametrize(
    ("level", "websockets_level"),
    [("debug", "WARNING"), ("info", "WARNING"), ("warning", "WARNING"), ("error", "ERROR")],
)
def test_websockets_logs_its_warnings_and_errors_but_not_its_per_connection_lines(
    level: str, websockets_level: str
) -> None:
    # "connection open", "connection rejected", "connection closed" repeat the service's own
    # lines; uvicorn's loggers, where the service's faults go, keep the configured level.
    config = log_config(level)

    assert config["loggers"]["websockets"]["level"] == websockets_level
    assert config["loggers"]["websockets"]["handlers"] == ["stdout"]
    assert config["loggers"]["uvicorn.error"]["level"] == level.upper()
