"""The wire protocol without I/O: framing, validation and request syntax (h11's model).

Bytes go in, validated lines and parsed requests come out. Nothing here touches a socket or a
clock. Parsing raises only :class:`~sealroom.core.errors.ProtocolError`; any other
exception is a bug.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.text import has_forbidden_chars


class Framing(enum.Enum):
    """A framing event that is not a line."""

    LINE_TOO_LONG = "line-too-long"


class LineBuffer:
    """Splits a byte stream into LF-terminated lines, bounded while it buffers.

    It remembers how far it has searched for LF, so a peer dripping one byte at a time costs
    linear work, and it never keeps more than ``max_line_bytes`` of an unfinished line (plus
    the chunk being fed): an over-long line is dropped as it arrives, and reported once its
    LF is seen, so the connection can carry on with the next line.
    """

    __slots__ = ("_buf", "_discarding", "_scanned", "_start", "max_line_bytes")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._start = 0  # where the next unconsumed line begins
        self._scanned = 0  # everything before this offset holds no LF
        self._discarding = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held for lines not yet returned."""
        return len(self._buf) - self._start

    def next_event(self) -> bytes | Framing | None:
        """The next complete line (LF and one CR before it removed), a framing event, or None."""
        while True:
            end = self._buf.find(b"\n", max(self._start, self._scanned))
            if end < 0:
                self._compact_after_search()
                return None
            line = bytes(self._buf[self._start : end])
            self._start = self._scanned = end + 1
            if self._discarding:
                self._discarding = False
                return Framing.LINE_TOO_LONG
            if len(line) + 1 > self.max_line_bytes:
                return Framing.LINE_TOO_LONG
            return line[:-1] if line.endswith(b"\r") else line

    def _compact_after_search(self) -> None:
        """No LF is buffered: drop consumed bytes, and an over-long partial line."""
        pending = len(self._buf) - self._start
        if self._discarding or pending >= self.max_line_bytes:
            # Even with an LF next, this line would be too long: stop storing it.
            self._discarding = True
            del self._buf[:]
        elif self._start:
            del self._buf[: self._start]
        self._start = 0
        self._scanned = len(self._buf)


def decode_line(raw: bytes) -> str:
    """Validate one line of input: strict UTF-8, no control characters, line or paragraph
    separators, or bidi overrides."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_ENCODING, "line is not valid UTF-8") from None
    if has_forbidden_chars(text):
        raise ProtocolError(
            ErrorCode.BAD_INPUT,
            "control characters, line separators and bidi overrides are not allowed",
        )
    return text


class Rest(enum.Enum):
    """Whether a verb takes free text as its last field (the rest of the line)."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Syntax:
    """The argument rule of one verb: ``required`` fields, up to ``optional`` more, then rest."""

    usage: str
    required: int = 0
    optional: int = 0
    rest: Rest = Rest.NONE


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request. ``verb`` is lower case; ``""`` is a plain message to the current room."""

    verb: str
    args: tuple[str, ...] = ()
    text: str | None = None


SAY_CURRENT = ""


def split_request(line: str) -> tuple[str, str]:
    """Split a validated line into (verb, remainder). Plain text has the verb ``""``.

    ``//text`` is a message that starts with ``/``: one slash is removed.
    """
    if not line.startswith("/") or line.startswith("//"):
        return SAY_CURRENT, line[1:] if line.startswith("//") else line
    verb, _, remainder = line[1:].partition(" ")
    return verb.lower(), remainder


def parse_arguments(verb: str, remainder: str, syntax: Syntax) -> Request:
    """Apply ``syntax`` to the text after the verb.

    Fields are separated by runs of spaces; the rest field begins after exactly one space, so a
    password or message may itself start with spaces.
    """
    fields: list[str] = []
    rest = remainder
    for _ in range(syntax.required + syntax.optional):
        rest = rest.lstrip(" ")
        if not rest:
            break
        field, _, rest = rest.partition(" ")
        fields.append(field)
    if len(fields) < syntax.required:
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"usage: {syntax.usage}")
    if syntax.rest is Rest.NONE:
        if rest.strip(" \t"):
            raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"usage: {syntax.usage}")
        return Request(verb, tuple(fields))
    if syntax.rest is Rest.REQUIRED and not rest.strip(" \t"):
        raise ProtocolError(ErrorCode.BAD_ARGUMENT, f"usage: {syntax.usage}")
    return Request(verb, tuple(fields), rest or None)


def encode_line(*fields: str) -> bytes:
    """One server line: fields joined by spaces, LF-terminated, UTF-8."""
    return (" ".join(fields) + "\n").encode("utf-8")
