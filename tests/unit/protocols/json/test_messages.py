"""The wire protocol: client message validation, client-safe errors, timestamps and envelopes."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from app.errors import Refusal
from app.protocols.json.messages import (
    DURABLE_TYPES,
    EPHEMERAL_TYPES,
    SERVER_ONLY_TYPES,
    CompilationCompleted,
    CompilationFailed,
    CompilationStarted,
    CursorUpdate,
    DocumentUpdate,
    OpenPayload,
    Ping,
    Selection,
    UserTyping,
    YjsAwareness,
    YjsSyncStep1,
    YjsSyncStep2,
    YjsUpdate,
    YjsUpdatePart,
    epoch_timestamp,
    parse_client_message,
    utc_timestamp,
)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def parse(message: dict[str, Any]) -> Any:
    return parse_client_message(json.dumps(message))


def relayed(message: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = parse(message).payload.relay()
    return result


def refusal(text: str | bytes) -> Refusal:
    with pytest.raises(Refusal) as info:
        parse_client_message(text)
    return info.value


# Every client type


@pytest.mark.parametrize(
    ("message", "model", "payload"),
    [
        (
            {"type": "cursor_update", "payload": {"line": 3, "column": 7, "document_id": "d1"}},
            CursorUpdate,
            {"line": 3, "column": 7, "document_id": "d1"},
        ),
        (
            {
                "type": "selection",
                "payload": {"start": {"line": 1, "column": 0}, "end": {"line": 2, "column": 5}},
            },
            Selection,
            {"start": {"line": 1, "column": 0}, "end": {"line": 2, "column": 5}},
        ),
        (
            {"type": "user_typing", "payload": {"is_typing": False}},
            UserTyping,
            {"is_typing": False},
        ),
        ({"type": "user_typing"}, UserTyping, {"is_typing": True}),
        (
            {"type": "document_update", "payload": {"document_id": "d1", "delta": [1, "a"]}},
            DocumentUpdate,
            {"document_id": "d1", "delta": [1, "a"]},
        ),
        ({"type": "document_update"}, DocumentUpdate, {}),
        (
            {
                "type": "yjs_update",
                "payload": {"document_id": "d", "update": "AQID", "origin": "local"},
            },
            YjsUpdate,
            {"document_id": "d", "update": "AQID", "origin": "local"},
        ),
        (
            {"type": "yjs_awareness", "payload": {"document_id": "d", "update": "AQID"}},
            YjsAwareness,
            {"document_id": "d", "update": "AQID"},
        ),
        (
            {"type": "yjs_sync_step1", "payload": {"document_id": "d", "state_vector": "AA=="}},
            YjsSyncStep1,
            {"document_id": "d", "state_vector": "AA=="},
        ),
        (
            {"type": "yjs_sync_step2", "payload": {"document_id": "d", "update": "AAA="}},
            YjsSyncStep2,
            {"document_id": "d", "update": "AAA="},
        ),
        (
            {
                "type": "yjs_update_part",
                "payload": {"document_id": "d", "index": 0, "final": True, "data": "AAA="},
            },
            YjsUpdatePart,
            {"document_id": "d", "index": 0, "final": True, "data": "AAA="},
        ),
        (
            {"type": "compilation_started", "payload": {"job": "j1"}},
            CompilationStarted,
            {"job": "j1"},
        ),
        (
            {"type": "compilation_completed", "payload": {"pdf_url": "/p.pdf", "ms": 1200}},
            CompilationCompleted,
            {"pdf_url": "/p.pdf", "ms": 1200},
        ),
        (
            {"type": "compilation_failed", "payload": {"errors": ["line 3: missing $"]}},
            CompilationFailed,
            {"errors": ["line 3: missing $"]},
        ),
        ({"type": "ping"}, Ping, {}),
    ],
    ids=lambda value: value.get("type") if isinstance(value, dict) else None,
)
def test_every_client_type_parses_and_relays(
    message: dict[str, Any], model: type[Any], payload: dict[str, Any]
) -> None:
    parsed = parse(message)

    assert isinstance(parsed, model)
    assert parsed.type == message["type"]
    assert parsed.payload.relay() == payload


def test_bytes_frames_are_accepted() -> None:
    parsed = parse_client_message(b'{"type": "ping", "payload": {}}')

    assert isinstance(parsed, Ping)


def test_type_sets_partition_the_relayed_types() -> None:
    assert not EPHEMERAL_TYPES & DURABLE_TYPES
    assert "cursor_update" in EPHEMERAL_TYPES
    assert "document_update" in DURABLE_TYPES
    assert "presence_state" in SERVER_ONLY_TYPES


# Binary payloads


@pytest.mark.parametrize("message_type", ["yjs_update", "yjs_awareness"])
@pytest.mark.parametrize(
    "update",
    ["AAEC/w==", [0, 1, 2, 255], {"0": 0, "1": 1, "2": 2, "3": 255}],
    ids=["base64", "int-array", "uint8array-object"],
)
def test_yjs_bytes_in_every_encoding_are_relayed_as_base64(
    message_type: str, update: object
) -> None:
    parsed = parse({"type": message_type, "payload": {"document_id": "d", "update": update}})

    assert parsed.payload.update == b"\x00\x01\x02\xff"
    assert parsed.payload.relay() == {"document_id": "d", "update": "AAEC/w=="}


@pytest.mark.parametrize(
    "update",
    [
        "not base64!",
        "",
        [],
        [0, 256],
        [-1],
        [1.0],
        [True],
        ["1"],
        {"0": 1, "2": 2},
        {"1": 1},
        {"0": "1"},
        5,
        None,
    ],
)
def test_invalid_yjs_bytes_are_refused(update: object) -> None:
    error = refusal(
        json.dumps({"type": "yjs_update", "payload": {"document_id": "d", "update": update}})
    )

    assert error.code == "invalid_message"
    assert error.details is not None
    assert error.details[0]["loc"] == "payload.update"


# Errors


@pytest.mark.parametrize("text", ["", "{", "not json", "{'type': 'ping'}", b"\xff\xfe"])
def test_text_that_is_not_json_is_invalid_json(text: str | bytes) -> None:
    error = refusal(text)

    assert error.code == "invalid_json"
    assert error.payload() == {"code": "invalid_json", "message": "message is not valid JSON"}


# Python's and pydantic's parsers accept these; JSON does not (RFC 8259 section 6), and a
# relay would have turned them into null.
NON_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity"]
# JSON grammar allows these, but no double holds them: parsed as infinity, relayed as null.
OUT_OF_RANGE_NUMBERS = ["1e999", "-1E+400", "1" * 400 + ".5"]
# Where a number may sit: the free-form payloads (relayed as sent), the typed fields, nested.
NUMBER_SITES = {
    "document": '{"type": "document_update", "payload": {"document_id": "d", "version": %s}}',
    "document-nested": '{"type": "document_update", "payload": {"ops": [{"at": [2, %s]}]}}',
    "compilation-completed": '{"type": "compilation_completed", "payload": {"duration_ms": %s}}',
    "compilation-failed": '{"type": "compilation_failed", "payload": {"errors": [%s]}}',
    "compilation-started": '{"type": "compilation_started", "payload": {"deep": {"n": %s}}}',
    "ping": '{"type": "ping", "payload": {"sent_at": %s}}',
    "typed-field": '{"type": "cursor_update", "payload": {"line": %s, "column": 0}}',
    "bytes": '{"type": "yjs_update", "payload": {"update": [1, %s]}}',
    "type": '{"type": %s}',
}


@pytest.mark.parametrize("number", NON_JSON_NUMBERS + OUT_OF_RANGE_NUMBERS, ids=lambda n: n[:8])
@pytest.mark.parametrize("site", NUMBER_SITES.values(), ids=NUMBER_SITES.keys())
def test_non_finite_numbers_are_invalid_json(site: str, number: str) -> None:
    error = refusal(site % number)

    assert error.code == "invalid_json"
    assert error.details is None


@pytest.mark.parametrize("number", NON_JSON_NUMBERS)
@pytest.mark.parametrize(
    "site",
    [
        # Keys the service ignores are still part of the text, which is not JSON.
        '{"type": "ping", "ignored": %s}',
        '{"type": "cursor_update", "payload": {"line": 1, "column": 2, "ignored": [%s]}}',
    ],
    ids=["top-level", "typed-payload"],
)
def test_non_json_numbers_are_invalid_json_even_where_ignored(site: str, number: str) -> None:
    assert refusal(site % number).code == "invalid_json"


def test_refusals_say_which_numbers_are_at_fault() -> None:
    assert "NaN" in refusal('{"type": "ping", "payload": {"n": NaN}}').message
    assert "range" in refusal('{"type": "ping", "payload": {"n": 1e999}}').message
    assert refusal('{"type": "ping", "payload": {"n": NaN}').message == "message is not valid JSON"


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_open_payloads_refuse_non_finite_floats_from_any_parser(number: float) -> None:
    # The HTTP API's bodies come from Python's parser, which reads NaN as a float.
    with pytest.raises(ValidationError):
        OpenPayload.model_validate({"document_id": "d", "stats": [{"ratio": number}]})


def test_non_json_number_words_inside_strings_are_text() -> None:
    payload = {"note": "NaN, Infinity and -Infinity are words here", "n": 1e308}

    assert relayed({"type": "document_update", "payload": payload}) == payload


def test_numbers_within_double_range_are_relayed_as_sent() -> None:
    payload = {"big": 1.7976931348623157e308, "small": -5e-324, "int": 10**400, "neg": -0.0}

    assert relayed({"type": "compilation_completed", "payload": payload}) == payload


@pytest.mark.parametrize("text", ["[]", '"ping"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_invalid_message(text: str) -> None:
    error = refusal(text)

    assert error.code == "invalid_message"
    assert error.details is None


def test_object_without_type_is_invalid_message() -> None:
    error = refusal('{"payload": {}}')

    assert error.code == "invalid_message"
    assert "type" in error.message


@pytest.mark.parametrize("type_value", ["chat", "CURSOR_UPDATE", "", 5, None, ["ping"]])
def test_unknown_type_is_reported(type_value: object) -> None:
    assert refusal(json.dumps({"type": type_value})).code == "unknown_type"


@pytest.mark.parametrize("server_type", sorted(SERVER_ONLY_TYPES))
def test_server_only_types_are_refused(server_type: str) -> None:
    error = refusal(json.dumps({"type": server_type, "payload": {}}))

    assert error.code == "server_only_type"


def test_validation_error_lists_where_and_what() -> None:
    error = refusal(json.dumps({"type": "cursor_update", "payload": {"line": -1}}))

    assert error.code == "invalid_message"
    assert error.details is not None
    assert {detail["loc"] for detail in error.details} == {"payload.line", "payload.column"}
    assert error.payload()["details"] == error.details


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "SECRET_TYPE"}',
        '{"type": "SECRET"',
        'SECRET{"type": "ping"}',
        '{"type": {"SECRET": 1}}',
        '{"type": "cursor_update", "payload": "SECRET"}',
        '{"type": "cursor_update", "payload": {"line": "SECRET", "column": 0}}',
        '{"type": "selection", "payload": {"start": "SECRET", "end": {"SECRET": 1}}}',
        '{"type": "user_typing", "payload": {"is_typing": "SECRET"}}',
        '{"type": "yjs_update", "payload": {"update": "SECRET!!"}}',
        '{"type": "yjs_update", "payload": {"update": {"SECRET": 1}}}',
        '{"type": "yjs_update", "payload": {"update": ["SECRET"]}}',
        '{"type": "yjs_update", "payload": {"update": "AQI=", "origin": "SECRET'
        + "x" * 300
        + '"}}',
        '{"type": "document_update", "payload": {"document_id": "SECRET' + "x" * 300 + '"}}',
        '{"type": "document_update", "payload": {"document_id": ["SECRET"]}}',
    ],
)
def test_errors_never_echo_the_input(text: str) -> None:
    error = refusal(text)
    reported = json.dumps(error.payload()) + str(error)

    assert "SECRET" not in reported
    assert "xxxx" not in reported


# Payload filtering


def test_extra_keys_in_typed_payloads_are_dropped() -> None:
    payload = relayed(
        {"type": "cursor_update", "payload": {"line": 1, "column": 2, "html": "<script>"}}
    )

    assert payload == {"line": 1, "column": 2}


def test_extra_keys_in_nested_typed_payloads_are_dropped() -> None:
    payload = relayed(
        {
            "type": "selection",
            "payload": {
                "start": {"line": 1, "column": 2, "x": 1},
                "end": {"line": 3, "column": 4},
                "y": 2,
            },
        }
    )

    assert payload == {"start": {"line": 1, "column": 2}, "end": {"line": 3, "column": 4}}


def test_extra_keys_in_yjs_payloads_are_dropped() -> None:
    payload = relayed(
        {"type": "yjs_update", "payload": {"document_id": "d", "update": [1], "state": "big"}}
    )

    assert payload == {"document_id": "d", "update": "AQ=="}


def test_top_level_identity_keys_are_ignored() -> None:
    parsed = parse(
        {
            "type": "cursor_update",
            "payload": {"line": 0, "column": 0},
            "user_id": "mallory",
            "username": "Admin",
            "client_id": "someone-else",
        }
    )

    assert parsed.model_dump() == {"type": "cursor_update", "payload": parsed.payload.model_dump()}


@pytest.mark.parametrize(
    "message_type",
    ["document_update", "compilation_started", "compilation_completed", "compilation_failed"],
)
def test_open_payloads_are_relayed_as_sent(message_type: str) -> None:
    sent = {
        "document_id": None,
        "ops": [{"insert": "x", "attributes": None}],
        "version": 7,
        "ratio": 0.5,
        "missing": None,
        "nested": {"deep": {"deeper": [True, False, None]}},
    }

    assert relayed({"type": message_type, "payload": sent}) == sent


def test_open_payload_still_validates_document_id() -> None:
    error = refusal(json.dumps({"type": "document_update", "payload": {"document_id": 5}}))

    assert error.code == "invalid_message"


def test_typed_payload_omits_unset_optional_fields() -> None:
    assert relayed({"type": "cursor_update", "payload": {"line": 1, "column": 1}}) == {
        "line": 1,
        "column": 1,
    }


# Strictness


@pytest.mark.parametrize("line", ["1", 1.5, True, -1, None])
def test_counts_must_be_non_negative_integers(line: object) -> None:
    error = refusal(json.dumps({"type": "cursor_update", "payload": {"line": line, "column": 0}}))

    assert error.code == "invalid_message"
    assert error.details is not None
    assert error.details[0]["loc"] == "payload.line"


@pytest.mark.parametrize("column", ["2", 2.0])
def test_selection_positions_are_strict_too(column: object) -> None:
    error = refusal(
        json.dumps(
            {
                "type": "selection",
                "payload": {
                    "start": {"line": 0, "column": column},
                    "end": {"line": 0, "column": 1},
                },
            }
        )
    )

    assert error.details is not None
    assert error.details[0]["loc"] == "payload.start.column"


@pytest.mark.parametrize("is_typing", ["true", 1, 0, "yes", None])
def test_typing_flag_must_be_a_json_boolean(is_typing: object) -> None:
    error = refusal(json.dumps({"type": "user_typing", "payload": {"is_typing": is_typing}}))

    assert error.code == "invalid_message"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "cursor_update"},
        {"type": "selection", "payload": {"start": {"line": 0, "column": 0}}},
        {"type": "yjs_update", "payload": {}},
        {"type": "document_update", "payload": None},
        {"type": "document_update", "payload": []},
    ],
)
def test_missing_or_malformed_payloads_are_refused(message: dict[str, Any]) -> None:
    assert refusal(json.dumps(message)).code == "invalid_message"


# Timestamps and envelopes


def test_utc_timestamp_has_millisecond_precision_and_z() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123_987, tzinfo=UTC)

    assert utc_timestamp(moment) == "2024-05-06T07:08:09.123Z"


def test_utc_timestamp_pads_milliseconds() -> None:
    assert utc_timestamp(datetime(2024, 1, 2, 3, 4, 5, 7_000, tzinfo=UTC)).endswith("05.007Z")


def test_utc_timestamp_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = utc_timestamp()

    assert TIMESTAMP.match(stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= datetime.now(UTC)


def test_epoch_timestamp_formats_each_second_afresh_in_any_order() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()
    stamps = [
        epoch_timestamp(moment + offset) for offset in (0.1234, 0.9999, 1.0, 61.5, -3600.25, 0.5)
    ]

    assert stamps == [
        "2024-05-06T07:08:09.123Z",
        "2024-05-06T07:08:09.999Z",
        "2024-05-06T07:08:10.000Z",
        "2024-05-06T07:09:10.500Z",
        "2024-05-06T06:08:08.750Z",
        "2024-05-06T07:08:09.500Z",
    ]


def test_utc_timestamp_converts_other_time_zones_to_utc() -> None:
    moment = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))

    assert utc_timestamp(moment) == "2024-01-01T10:00:00.000Z"
