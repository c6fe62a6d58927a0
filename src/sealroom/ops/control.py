"""The control channel: a Unix-domain socket for ``sealroom status``, ``sessions``, ``reload``
and ``kick``.

One request per connection, one JSON object per line each way: the client sends
``{"command": "status"}`` or ``{"command": "kick", "name": NAME, "reason": TEXT}`` and reads
``{"ok": true, ...}`` or ``{"ok": false, "error": TEXT}``.

Who may ask: the socket file is mode 0600, created in a private directory and renamed into
place, so there is no moment when others could connect; and each connection's peer
credentials (``SO_PEERCRED``) must be root or the server's own user.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sealroom.core.errors import UserError

log = logging.getLogger("sealroom.control")

MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 5.0
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

Reply = dict[str, Any]
Command = Callable[[Mapping[str, Any]], Reply]


class ControlError(Exception):
    """A request the server refuses; its text goes back to the client as ``error``."""


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``commands`` (name -> handler) on a Unix socket at ``path``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, commands: Mapping[str, Command]) -> None:
        self.path = path
        self.commands = dict(commands)
        self._inode: int | None = None
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise UserError(
                f"control socket path {path} is too long for a Unix socket "
                f"(at most {MAX_SOCKET_PATH_BYTES} bytes); set control.socket"
            )
        try:
            super().__init__(str(path), _ControlHandler)
        except OSError as error:
            raise UserError(
                f"cannot open control socket {path}: {error.strerror or error}"
            ) from None

    def server_bind(self) -> None:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale_socket(path)
        # Bind inside a fresh 0700 directory, restrict the socket, then move it into place:
        # the path never names a socket that others may connect to, whatever the umask.
        private = tempfile.mkdtemp(prefix=".s", dir=path.parent)
        try:
            temporary = os.path.join(private, "s")
            self.socket.bind(temporary)
            os.chmod(temporary, 0o600)
            os.rename(temporary, path)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
        self._inode = path.stat().st_ino
        self.server_address = str(path)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        uid = _peer_uid(request)
        if uid in (0, os.geteuid()):
            return True
        log.warning("control socket: refused a client running as uid %s", uid)
        return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("control socket: unexpected error")

    def server_close(self) -> None:
        super().server_close()
        # Remove the file only if it is still ours (a newer server may have replaced it).
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    def run(self, message: Mapping[str, Any]) -> Reply:
        """One request, as the socket would serve it (also used by tests)."""
        name = message.get("command")
        command = self.commands.get(name) if isinstance(name, str) else None
        if command is None:
            return {"ok": False, "error": f"unknown command; try one of {sorted(self.commands)}"}
        try:
            return {"ok": True, **command(message)}
        except ControlError as error:
            return {"ok": False, "error": str(error)}


class _ControlHandler(socketserver.StreamRequestHandler):
    server: ControlServer
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        except TimeoutError:
            return
        if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
            reply: Reply = {"ok": False, "error": "a request is one JSON line of at most 4 KiB"}
        else:
            try:
                message = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                message = None
            if isinstance(message, dict):
                reply = self.server.run(message)
            else:
                reply = {"ok": False, "error": "a request is a JSON object"}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket a dead server left behind; refuse to steal a live server's socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError(f"control socket path {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise UserError(
                f"cannot check control socket {path}: {error.strerror or error}"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # nobody listens: a crashed server's leftover
        return
    finally:
        probe.close()
    raise UserError(f"another server is running with control socket {path}")


def request(path: Path, message: Mapping[str, Any], timeout: float = 10.0) -> Reply:
    """Send one request to the server at ``path``; a UserError if it cannot be asked."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as error:
            hint = " (is the server running?)" if error.errno in _NOT_RUNNING else ""
            raise UserError(
                f"cannot reach the server at {path}: {error.strerror or error}{hint}"
            ) from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(1 << 24)
        except OSError as error:
            raise UserError(f"control socket {path}: {error.strerror or error}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise UserError(f"control socket {path}: no answer (the server refused or closed)")
    return reply


_NOT_RUNNING = (errno.ENOENT, errno.ECONNREFUSED)
