"""Tools for the hostile-client tests (``test_security_*.py``): what an attacker sends and what
the server process costs while it does.

Only loopback addresses are ever used: 127.0.0.1 for honest clients, 127.0.0.2 and 127.0.0.3
(which Linux routes to the same interface) for attackers that must count as other addresses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from helpers import Client

ATTACKER_ADDRESSES = ("127.0.0.2", "127.0.0.3")
MIB = 1024 * 1024


# -- what the server process costs ---------------------------------------------------------


def proc_status(pid: int | str = "self") -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory now (VmRSS), in bytes."""
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connection_threads() -> int:
    """Threads of in-process servers that serve one connection each."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


class PeakRss:
    """The highest resident memory of a process while the ``with`` block runs.

    The kernel's own high-water mark (VmHWM, reset through ``/proc/PID/clear_refs``) catches
    spikes between samples; where that reset is not allowed, a sampling thread still runs.
    """

    def __init__(self, pid: int | str = "self", interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = rss_bytes(self.pid)
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))
        if self._hwm_reset:
            hwm = int(proc_status(self.pid)["VmHWM"].split()[0]) * 1024
            self.peak = max(self.peak, hwm)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# -- connecting as someone else --------------------------------------------------------------


def raw_connection(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A plain TCP connection to the server from the loopback address ``source``."""
    address = ("127.0.0.1", port)
    return socket.create_connection(address, timeout=timeout, source_address=(source, 0))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` (reading and discarding data)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:  # a reset is a close too
            return True


def client_hello(ca_file: Path, *, tls13: bool = True) -> bytes:
    """The bytes of a real ClientHello, made without a socket."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@contextlib.contextmanager
def many(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    """Close every socket in the list, however the block ends."""
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def round_trip(client: Client, token: str, timeout: float = 30.0) -> float:
    """Seconds for one ``/ping`` to come back (events before the reply are skipped)."""
    started = time.monotonic()
    assert client.request(f"/ping {token}", timeout=timeout) == f"OK ping {token}"
    return time.monotonic() - started


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
