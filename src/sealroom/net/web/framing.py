"""WebSocket text messages to protocol lines, without I/O (SPEC section 5).

Each text message from a client is one request line without its LF. The session reads a
byte stream of LF-terminated lines (its :class:`~sealroom.core.protocol.LineBuffer`), so a
message becomes its bytes and an LF, and the session's own framing and validator judge it
exactly as a line on the TLS port. (The other way, one text message per server line, is
:meth:`~sealroom.net.web.door.WebDoor.frames`.)
"""

from __future__ import annotations

# A CR or LF inside a message would end the line early (or vanish before the LF): both are
# control characters, which the validator refuses with ERR bad-input. A NUL in their place
# keeps that verdict and keeps the message one line.
_LINE_BREAKS = bytes.maketrans(b"\r\n", b"\x00\x00")


class MessageAssembler:
    """Collects one text message (its fragments) into a line, storing at most a line's worth.

    A message is a line without its LF, so it may hold ``max_line_bytes - 1`` bytes, as on
    the TLS port. A longer one stops being stored as it arrives; once it ends, it becomes a
    line the session's framing reports as too long (``ERR line-too-long``).
    """

    __slots__ = ("_message", "_too_long", "max_line_bytes")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._message = bytearray()
        self._too_long = False

    def add(self, text: str, finished: bool) -> bytes | None:
        """A fragment of the current message; its line (with LF) once ``finished``."""
        if not self._too_long:
            data = text.encode("utf-8")
            if len(self._message) + len(data) + 1 > self.max_line_bytes:
                self._too_long = True
                self._message.clear()
            else:
                self._message += data
        if not finished:
            return None
        if self._too_long:
            self._too_long = False
            return bytes(self.max_line_bytes) + b"\n"  # one byte past the limit, with its LF
        line = bytes(self._message).translate(_LINE_BREAKS) + b"\n"
        self._message.clear()
        return line
