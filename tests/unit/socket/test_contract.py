"""The uvicorn contract: the installed release passes; one lacking what the subclasses use fails
loudly, naming what is missing, and the command line refuses to start on it."""

from __future__ import annotations

from typing import Any

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

import app.__main__
import app.upgrade.server
from app.socket.contract import ContractError, check_uvicorn


def test_the_installed_uvicorn_passes() -> None:
    check_uvicorn()


class WithoutCloseTimer(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.close_timer


class WithoutFlowControl(WebSocketsSansIOProtocol):
    def pause_writing(self) -> None:
        pass  # a release whose backpressure no longer goes through `writable`


class WithoutPauseWriting(WebSocketsSansIOProtocol):
    pause_writing = None  # type: ignore[assignment]


class Unrelated:
    """A protocol that makes none of the writes the subclass watches for."""

    def run_asgi(self) -> None: ...
    def send(self) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def connection_lost(self) -> None: ...
    def data_received(self) -> None: ...


def refusal(**bases: type[Any]) -> str:
    with pytest.raises(ContractError) as info:
        check_uvicorn(**bases)
    return str(info.value)


def test_missing_instance_state_is_named() -> None:
    message = refusal(websocket_base=WithoutCloseTimer)

    assert "close_timer" in message
    assert "pyproject.toml" in message


def test_flow_control_that_no_longer_reaches_writable_is_refused() -> None:
    assert "pause_writing to clear `writable`" in refusal(websocket_base=WithoutFlowControl)


def test_a_missing_method_is_named() -> None:
    assert "WithoutPauseWriting.pause_writing" in refusal(websocket_base=WithoutPauseWriting)


def test_writes_the_fast_path_watches_for_are_checked() -> None:
    message = refusal(websocket_base=Unrelated)

    assert "self.close_sent = True" in message
    assert "self.writable.clear()" in message


def test_the_command_line_refuses_to_start_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise ContractError("uvicorn 9.9 is not one this service was built against: close_timer")

    monkeypatch.setattr(app.upgrade.server, "check_uvicorn", broken)
    monkeypatch.setenv("JWT_SECRET", "x" * 40)

    assert app.__main__.main(["serve"]) == 2
    assert "refusing to start: uvicorn 9.9" in capsys.readouterr().err
