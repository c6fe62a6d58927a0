"""Everything the client library raises on purpose, as one tree under :class:`SealroomError`.

The tree separates what a caller handles differently: a refused request (the connection is
still good), a connection that is gone (reconnect or give up), one that never opened, a
server that broke the protocol, and a request this client will not send.
"""

from __future__ import annotations

import re

from sealroom.core.errors import ErrorCode
from sealroom.core.text import escape_for_log

__all__ = [
    "ConnectError",
    "ConnectionClosed",
    "InvalidArgument",
    "ProtocolViolation",
    "ReconnectFailed",
    "RequestError",
    "RequestTimeout",
    "SealroomError",
]

_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?)s")


class SealroomError(Exception):
    """Anything this library raises on purpose."""


class RequestError(SealroomError):
    """The server refused a request: ``ERR CODE TEXT``. The connection stays usable."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code}: {escape_for_log(text)}")
        self.code = code
        self.text = text

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait, for ``rate-limited`` (its text says ``retry in Ns``)."""
        match = _RETRY_IN.search(self.text)
        return float(match.group(1)) if match else None


class ConnectError(SealroomError):
    """The connection could not be opened: refused, unreachable, TLS failed, no HELLO."""


class ConnectionClosed(SealroomError):  # noqa: N818 -- names the condition
    """The connection ended; ``reason`` is the server's BYE reason or what went wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        shown = escape_for_log(reason)
        super().__init__(f"connection closed: {shown}" + (f" ({detail})" if detail else ""))
        self.reason = reason


class RequestTimeout(ConnectionClosed):
    """No reply in time. The connection is closed: a late reply would answer the next one."""


class ReconnectFailed(ConnectionClosed):
    """Automatic reconnection gave up (attempts used up, or the login was refused)."""


class ProtocolViolation(SealroomError):  # noqa: N818 -- names the condition
    """The server said something this client does not understand."""


class InvalidArgument(SealroomError, ValueError):  # noqa: N818 -- names the condition
    """A request the client refuses to send; nothing was sent."""
