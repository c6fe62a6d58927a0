"""Wire error codes and the exceptions that carry them.

The codes are the contract of SPEC.md section 1; ``tests/test_spec_sync.py`` keeps this enum
and the spec in step, so a code cannot be added or renamed on one side only.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The word after ``ERR`` on the wire."""

    BAD_COMMAND = "bad-command"
    BAD_ARGUMENT = "bad-argument"
    BAD_ENCODING = "bad-encoding"
    BAD_INPUT = "bad-input"
    LINE_TOO_LONG = "line-too-long"
    AUTH_REQUIRED = "auth-required"
    AUTH_FAILED = "auth-failed"
    ALREADY_LOGGED_IN = "already-logged-in"
    RATE_LIMITED = "rate-limited"
    NO_SUCH_ROOM = "no-such-room"
    NO_SUCH_USER = "no-such-user"
    NOT_IN_ROOM = "not-in-room"
    FORBIDDEN = "forbidden"
    SERVER_BUSY = "server-busy"


class ProtocolError(Exception):
    """A request the server refuses; becomes one ``ERR CODE TEXT`` line.

    Raising anything else while handling a request is a bug in the server.
    """

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text

    def wire(self) -> str:
        return f"ERR {self.code} {self.text}"


class UserError(Exception):
    """A mistake by the person at the command line: one line on stderr, exit status 1."""
