"""The reactor's wake-up signal: an eventfd that other threads (workers, listeners, a fan-out
on another thread) set cheaply when they hand it work while it sleeps in epoll.

``os.eventfd_write`` would release and re-take the GIL around the write, handing the GIL to
the reactor it just woke in the middle of the writer's work. An eventfd write never blocks,
so we call libc's ``write`` through ``ctypes.PyDLL``, which keeps the GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

_EIGHT = ctypes.c_size_t(8)


def _load_libc() -> ctypes.PyDLL | None:
    try:
        libc = ctypes.PyDLL(None)  # the process's own symbols, libc among them
        libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        libc.write.restype = ctypes.c_ssize_t
        libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        libc.read.restype = ctypes.c_ssize_t
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


class Wakeup:
    """One eventfd: ``set`` from any thread, ``clear`` and ``fileno`` on the owner's."""

    __slots__ = ("_buffer", "fd")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._buffer = ctypes.c_uint64(1)

    def fileno(self) -> int:
        return self.fd

    def set(self) -> None:
        if _LIBC is not None:
            _LIBC.write(self.fd, ctypes.byref(self._buffer), _EIGHT)  # never blocks
        else:
            os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        if _LIBC is not None:
            scratch = ctypes.c_uint64()
            _LIBC.read(self.fd, ctypes.byref(scratch), _EIGHT)  # non-blocking: EAGAIN if 0
        else:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.fd)

    def close(self) -> None:
        os.close(self.fd)
