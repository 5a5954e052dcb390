"""Server-to-client WebSocket frames, built as whole byte strings (RFC 6455 §5.2).

Server frames are unmasked, so one frame's bytes can be written to every subscriber as they
are; building them here once per publish is what lets fan-out skip per-socket framing.
"""

from __future__ import annotations

import struct

_TEXT = 0x81  # FIN + text opcode
_CLOSE = 0x88  # FIN + close opcode

# An empty ping; clients answer with a pong, which tells the server they are alive.
PING = b"\x89\x00"


def _frame(first_byte: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((first_byte, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first_byte, 126, size) + payload
    return struct.pack("!BBQ", first_byte, 127, size) + payload


def text(payload: bytes) -> bytes:
    """Return one unfragmented text frame carrying UTF-8 `payload`."""
    return _frame(_TEXT, payload)


def close(code: int, reason: str = "") -> bytes:
    """Return a close frame with a status code and a reason of at most 123 bytes."""
    encoded = reason.encode()[:123].decode(errors="ignore").encode()
    return _frame(_CLOSE, struct.pack("!H", code) + encoded)
