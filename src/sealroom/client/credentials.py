"""What a client keeps to log in again after a reconnect, kept out of every repr.

A traceback's locals, a debugger or ``repr(vars(client))`` would otherwise print a password
or a resume token that is worth an account.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["Secret", "Token"]


class Token:
    """A resume token (``/token``): the value is kept out of reprs and logs."""

    __slots__ = ("_value", "expires")

    def __init__(self, value: str, expires: datetime | None) -> None:
        self._value = value
        self.expires = expires

    @property
    def value(self) -> str:
        return self._value

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires

    def __repr__(self) -> str:
        return f"Token(<hidden>, expires={self.expires!r})"


class Secret:
    """A password kept for reconnecting: never shown by repr, str or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__
