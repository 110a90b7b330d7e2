"""What the gateway's protocol subclasses need of uvicorn's, checked before the server starts.

`GatewayProtocol` and `GatewayHttpProtocol` reach into uvicorn's protocols for private state
(the receive queue, the writable event, close flags, timers). A uvicorn without one of them
would still import and run, with backpressure or the request limits silently off: so the
service refuses to start instead, naming what is missing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.server import ServerProtocol

# Instance state uvicorn's WebSocket protocol must create in __init__, with what it must be.
WEBSOCKET_STATE: dict[str, Callable[[Any], bool]] = {
    "queue": lambda value: callable(getattr(value, "put_nowait", None)),
    "writable": lambda value: callable(getattr(value, "is_set", None)),
    "close_sent": lambda value: value is False,
    "disconnected": lambda value: value is False,
    "close_timer": lambda value: value is None,
    "close_timeout": lambda value: isinstance(value, int | float),
    "read_paused": lambda value: value is False,
    "handshake_complete": lambda value: value is False,
    "loop": lambda value: isinstance(value, asyncio.AbstractEventLoop),
    "conn": lambda value: (
        all(
            callable(getattr(value, name, None))
            for name in ("send_text", "send_binary", "send_close", "data_to_send")
        )
        # Read by websockets' parser for each frame: `limit_frames` raises it for one connection.
        and isinstance(getattr(value, "max_message_size", None), int)
    ),
    "frames": lambda value: isinstance(value, list),
    "initial_response": lambda value: value is None,
    "handshake_initiated": lambda value: value is False,
}
# Methods the subclass overrides or calls.
WEBSOCKET_METHODS = (
    "run_asgi",
    "send",
    "pause_writing",
    "resume_writing",
    "connection_lost",
    "data_received",
    "handle_connect",
    "handle_parser_exception",
    "send_receive_event_to_app",
)
# Writes the subclass relies on uvicorn making: the properties and replacements that keep its
# one-flag fast path in step watch for exactly these.
WEBSOCKET_WRITES = (
    "self.close_sent = True",
    "self.disconnected = True",
    "self.writable.clear()",
    "self.writable.set()",
    "self.queue.put_nowait(",
    "self.close_timer = ",
    # client_faults replaces how a finished message reaches the app: uvicorn must still call it.
    "self.send_receive_event_to_app()",
    "self.curr_msg_data_type = ",
)
HTTP_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "handle_websocket_upgrade",
    "_should_upgrade",
    "send_400_response",
)
HTTP_STATE = ("loop", "parser", "pipeline", "headers", "cycle", "client", "transport")
# The request/response cycle state the body limits read and set when they refuse a request.
CYCLE_WRITES = (
    "self.response_started = ",
    "self.response_complete = ",
    "self.disconnected = ",
    "self.message_event = ",
)


# What app/socket/client_faults.py reads of websockets' server handshake.
HANDSHAKE_STATE = (
    "handshake_exc",
    "available_extensions",
    "max_message_size",
    "max_fragment_size",
)


class ContractError(RuntimeError):
    """The installed uvicorn lacks something the gateway's protocols rely on."""


def check_uvicorn(
    websocket_base: type[Any] = WebSocketsSansIOProtocol,
    http_base: type[Any] = HttpToolsProtocol,
    cycle: type[Any] = RequestResponseCycle,
    handshake: type[Any] = ServerProtocol,
) -> None:
    """Raise ContractError listing everything missing; return quietly when all is there."""
    problems = [
        *_missing_methods(websocket_base, WEBSOCKET_METHODS),
        *_missing_writes(websocket_base, WEBSOCKET_WRITES),
        *_missing_methods(http_base, HTTP_METHODS),
        *_missing_writes(cycle, CYCLE_WRITES),
        *_missing_methods(handshake, ("reject", "accept", "data_to_send")),
    ]
    if not problems:
        problems = [
            *_websocket_state(websocket_base),
            *_http_state(http_base),
            *_handshake_state(handshake),
        ]
    if problems:
        raise ContractError(
            f"uvicorn {uvicorn.__version__} is not one this service was built against "
            f"(see the uvicorn range in pyproject.toml): {'; '.join(problems)}"
        )


def _missing_methods(base: type[Any], names: Iterable[str]) -> list[str]:
    return [
        f"expected method {base.__name__}.{name}, got none"
        for name in names
        if not callable(getattr(base, name, None))
    ]


def _missing_writes(base: type[Any], writes: Iterable[str]) -> list[str]:
    try:
        source = "".join(inspect.getsource(cls) for cls in base.__mro__ if cls is not object)
    except (OSError, TypeError):
        return [f"expected the source of {base.__name__} to check its state changes, got none"]
    return [
        f"expected {base.__name__} to make the write `{write.strip()}`, got none"
        for write in writes
        if write not in source
    ]


def _handshake_state(handshake: type[Any]) -> list[str]:
    protocol = handshake()
    return [
        f"expected {handshake.__name__} to have {name}, got none"
        for name in HANDSHAKE_STATE
        if not hasattr(protocol, name)
    ]


def _config() -> uvicorn.Config:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    config = uvicorn.Config(app, log_config=None, lifespan="off")
    config.load()
    return config


def _websocket_state(base: type[Any]) -> list[str]:
    loop = asyncio.new_event_loop()
    try:
        protocol = base(_config(), ServerState(), {}, _loop=loop)
        problems = []
        for name, valid in WEBSOCKET_STATE.items():
            if not hasattr(protocol, name):
                problems.append(f"expected {base.__name__}.__init__ to set {name}, got none")
            elif not valid(getattr(protocol, name)):
                problems.append(
                    f"expected {base.__name__}.{name} as 0.54 sets it, "
                    f"got {type(getattr(protocol, name)).__name__}"
                )
        if not problems:
            # Flow control must reach the writable flag: it is what backpressure reads.
            protocol.pause_writing()
            paused = not protocol.writable.is_set()
            protocol.resume_writing()
            if not paused or not protocol.writable.is_set():
                problems.append(f"expected {base.__name__}.pause_writing to clear `writable`")
        return problems
    finally:
        loop.close()


def _http_state(base: type[Any]) -> list[str]:
    loop = asyncio.new_event_loop()
    try:
        protocol = base(_config(), ServerState(), {}, _loop=loop)
        return [
            f"expected {base.__name__}.__init__ to set {name}, got none"
            for name in HTTP_STATE
            if not hasattr(protocol, name)
        ]
    finally:
        loop.close()
