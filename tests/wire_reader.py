"""Test helper: read server frames from the client end of a socket pair, strictly."""

from __future__ import annotations

import json
import socket
import time

from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode


class WireReader:
    """Parses every byte the server side wrote; a cut or corrupt frame raises."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._parser = FrameProtocol(client=True, extensions=[])
        self.frames: list[tuple[Opcode, bytes]] = []
        self._partial: list = []

    def read_until(self, predicate, timeout: float = 5.0) -> list[tuple[Opcode, bytes]]:
        """Read until predicate(frames) is true; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.frames):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; frames so far: {self.texts()[-5:]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            self._parser.receive_bytes(data)
            for frame in self._parser.received_frames():
                payload = frame.payload
                if frame.opcode is Opcode.CLOSE:
                    code, reason = payload
                    payload = (int(code) if isinstance(code, CloseReason) else code, reason)
                elif not frame.frame_finished or self._partial:
                    # wsproto hands over a large frame in pieces as the bytes arrive.
                    self._partial.append(payload)
                    if not frame.frame_finished:
                        continue
                    payload = type(payload)().join(self._partial)
                    self._partial = []
                self.frames.append((frame.opcode, payload))
        return self.frames

    def texts(self) -> list[dict]:
        """Return the JSON bodies of every text frame so far."""
        return [json.loads(p) for op, p in self.frames if op is Opcode.TEXT]

    def close_code(self) -> int | None:
        """Return the close code if a close frame arrived."""
        for op, payload in self.frames:
            if op is Opcode.CLOSE:
                return payload[0]
        return None
