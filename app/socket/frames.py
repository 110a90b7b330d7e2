"""Server frames built by hand, so that one broadcast is framed once for all its recipients."""

from __future__ import annotations

_TEXT = 0x81  # FIN + text
_BINARY = 0x82  # FIN + binary


def data_frame(data: bytes, binary: bool = False) -> bytes:
    """An unmasked, final text or binary frame carrying `data`, as a server sends it (RFC 6455
    5.2); what websockets would write for a connection without extensions."""
    first = _BINARY if binary else _TEXT
    size = len(data)
    if size < 126:
        head = bytes((first, size))
    elif size < 65536:
        head = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + size.to_bytes(8, "big")
    return head + data
