"""data_frame: the once-per-broadcast frame is byte for byte what websockets would send."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from app.socket.frames import data_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_websockets_serialization(size: int) -> None:
    data = bytes(range(97, 123)) * (size // 26) + b"a" * (size % 26)
    expected = Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
    assert data_frame(data) == expected


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_binary_frame_matches_websockets_serialization(size: int) -> None:
    data = bytes(index % 256 for index in range(size))
    expected = Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[])
    assert data_frame(data, binary=True) == expected
