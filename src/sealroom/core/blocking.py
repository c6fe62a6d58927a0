"""A tripwire for blocking calls on a thread that must never block.

The reactor thread serves every connection: one SQLite commit or argon2 verification on it
stalls them all. It marks itself with :func:`forbid_blocking`; the store and the password
hasher call :func:`check_may_block` before they block. On a marked thread that is a bug:
with ``SEALROOM_STRICT_BLOCKING=1`` (the test suite sets it) it raises
:class:`BlockingCallError`, so a test fails; otherwise it is logged once per kind of call
and the server carries on, slower but serving.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("sealroom")

_local = threading.local()
_reported: set[str] = set()


class BlockingCallError(RuntimeError):
    """A blocking call was made on a thread that promised never to block."""


def forbid_blocking(owner: str) -> None:
    """Mark the calling thread: from now on nothing on it may block (``owner`` names it)."""
    _local.owner = owner


def check_may_block(what: str) -> None:
    """Called before ``what`` blocks; complains if the calling thread must not block."""
    owner: str | None = getattr(_local, "owner", None)
    if owner is None:
        return
    message = f"{what} called on the {owner} thread, which must never block"
    if os.environ.get("SEALROOM_STRICT_BLOCKING") == "1":
        raise BlockingCallError(message)
    if what not in _reported:
        _reported.add(what)
        log.error("bug: %s", message)
