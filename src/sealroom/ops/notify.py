"""systemd's notification protocol (``sd_notify``), spoken directly over its socket.

The service manager passes a datagram socket in ``NOTIFY_SOCKET`` (a path, or an abstract
name written with a leading ``@``); each notification is one datagram of ``KEY=VALUE``
lines. This needs no library: a ``SOCK_DGRAM`` Unix socket and ``send`` are the whole
protocol. Without ``NOTIFY_SOCKET`` every call is a no-op, so the server behaves the same
outside systemd.

The watchdog: when systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID`` is absent or ours),
the server must send ``WATCHDOG=1`` more often than that; we aim for half of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger("sealroom.notify")


def _socket_address(raw: str) -> str | bytes | None:
    """The address to send to: a path, or an abstract name as bytes beginning with NUL."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # systemd only ever passes these two forms (vsock is not for services)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when not asked for."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # the watchdog is meant for another process (we were forked off it)
    return int(usec) / 2_000_000


class Notifier:
    """Sends state changes to the service manager; thread-safe; silent when unmanaged."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw else None
        if raw and self._address is None:
            log.warning("ignoring NOTIFY_SOCKET %r: not a path or @name", raw[:100])
        self.watchdog_interval = _watchdog_interval(environ) if self._address else None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` fields; True if it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message, self._address)
            except OSError as error:
                # The manager may be gone or restarting; notifications are advice, never fatal.
                if not self._failed:
                    self._failed = True
                    log.warning("cannot notify the service manager: %s", error)
                return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets the manager tell this reload from an older one (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # STATUS is one line of the datagram: a newline in it would start a new field.
    return (f"STATUS={' '.join(text.split())}",)
