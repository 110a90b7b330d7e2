"""lib0's variable-length encoding, as Yjs and y-protocols write it: unsigned varints, byte
arrays and UTF-8 strings prefixed with their length in bytes."""

from __future__ import annotations


class Truncated(ValueError):
    """The bytes ended in the middle of a value, or a value claims more than is there."""


def write_var_uint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def write_var_bytes(out: bytearray, data: bytes) -> None:
    write_var_uint(out, len(data))
    out += data


def write_var_string(out: bytearray, text: str) -> None:
    # lib0 prefixes the UTF-8 length in bytes (pycrdt's Encoder writes the character count).
    write_var_bytes(out, text.encode())


class Reader:
    """Reads lib0 values from `data`, refusing anything that runs past its end."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.data)

    def var_uint(self) -> int:
        data = self.data
        value = 0
        shift = 0
        while True:
            if self.position >= len(data):
                raise Truncated("expected a varint, got the end of the data")
            byte = data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise Truncated("expected a varint of at most 64 bits")

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        end = self.position + length
        if end > len(self.data):
            raise Truncated(f"expected {length} bytes, got {len(self.data) - self.position}")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode()
        except UnicodeDecodeError:
            raise Truncated("expected UTF-8 text") from None

    def rest(self) -> bytes:
        chunk = self.data[self.position :]
        self.position = len(self.data)
        return chunk
