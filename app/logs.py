"""Structured JSON logging for the service and uvicorn, with every token redacted on the way out."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

# Applied to each finished line, so it covers uvicorn's request lines, exception texts and
# anything a library might print: the query string, bearer headers and anything shaped like a JWT.
_REDACTIONS = (
    (re.compile(r"(?i)([?&](?:access_)?token=)[^&\s\"'\\]*"), r"\1[redacted]"),
    (re.compile(r"(?i)(bearer[\s,]+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)

_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Strings first (JSON escaping would hide a tab or newline after "Bearer"), then the
        # whole line for anything inside other values.
        for key, value in entry.items():
            if isinstance(value, str):
                entry[key] = redact(value)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def log_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn, handed to uvicorn.Config."""
    upper = level.upper()
    # websockets' info lines repeat the service's own (connection opened, refused, closed);
    # its warnings and errors still show.
    websockets_level = max(logging.getLevelName(upper), logging.WARNING)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "texflow": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "websockets": {
                "handlers": ["stdout"],
                "level": logging.getLevelName(websockets_level),
                "propagate": False,
            },
        },
    }
