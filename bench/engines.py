"""PostgreSQL and Redis of the bench's own, for the cluster scenarios, with their CPU time.

Like tests/engines.py (which the bench does not import: the tests' PostgreSQL runs with
fsync off), each engine runs from a temporary directory on a free 127.0.0.1 port and is
stopped by its PID. What differs is durability, which a benchmark must pay for as a
deployment would:

* **PostgreSQL** runs with its normal durability: ``fsync=on``, ``synchronous_commit=on``,
  ``full_page_writes=on`` (the defaults, spelt out), default ``wal_sync_method``
  (``fdatasync`` on Linux), 128 MB of shared buffers (the default), 200 connections. Its
  data directory is under ``/tmp`` on the machine's disk (not a tmpfs). As root it runs as
  the ``postgres`` user (it refuses root).
* **Redis** runs with its append-only file on and ``appendfsync everysec`` (Redis's default
  for the AOF, and what the nodes' start-up check accepts: an acknowledged write is in the
  kernel before the reply, so it survives a crash of Redis; only a crash of the machine
  can lose the last second), ``maxmemory-policy noeviction``, no RDB snapshots.

CPU: :meth:`cpu_seconds` is utime + stime of the engine's processes from ``/proc``, and of
those that ended. For PostgreSQL that is the postmaster plus every live child (one backend
per connection, the WAL writer, the checkpointer, ...) plus the postmaster's ``cutime`` and
``cstime``: the CPU of children it has already reaped (backends of closed connections).
For Redis it is the server (all its threads) plus ``cutime``/``cstime`` (an AOF rewrite
runs in a forked child).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

STARTUP_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0
SUPERUSER = "postgres"
DATABASE = "sealroom"
TICKS = os.sysconf("SC_CLK_TCK")

DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "log_min_messages": "warning",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_seconds(pid: int, *, children: bool) -> float:
    """utime + stime + cutime + cstime of ``pid``; with ``children``, plus those of every
    live process whose parent it is. A process that is gone counts 0."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    if children:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                child = _stat_fields(int(entry))
                if int(child[1]) == pid:
                    ticks += sum(int(child[i]) for i in (11, 12, 13, 14))
    return ticks / TICKS


def postgres_bindir() -> Path:
    """``$SEALROOM_PG_BINDIR``, an ``initdb`` on PATH, or Debian's newest."""
    candidates: list[Path] = []
    if configured := os.environ.get("SEALROOM_PG_BINDIR"):
        candidates.append(Path(configured))
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    key = lambda p: tuple(int(n) for n in re.findall(r"\d+", p.parent.name))  # noqa: E731
    candidates += sorted(debian, key=key, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise RuntimeError("PostgreSQL's initdb and postgres were not found (`make system-deps`)")


def redis_server() -> str:
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("redis-server not found (Debian's redis-server)")


def missing() -> str | None:
    """Why the cluster scenarios cannot run here, or None."""
    try:
        import psycopg  # noqa: F401, PLC0415
        import redis  # noqa: F401, PLC0415
    except ImportError as error:
        return f"{error.name} is missing: pip install -e '.[cluster]'"
    try:
        postgres_bindir()
        redis_server()
    except RuntimeError as error:
        return str(error)
    return None


def _log_tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return "(no log)"


class Postgres:
    """A durable PostgreSQL server of the bench's own, with one database, ``sealroom``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bindir = postgres_bindir()
        self.data = folder / "data"
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = (
            {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if os.geteuid() == 0 else {}
        )

    @property
    def url(self) -> str:
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{DATABASE}"
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """The postmaster, its live children, and the children it has reaped."""
        return tree_cpu_seconds(self.pid, children=True)

    def backends(self) -> int:
        """Live child processes of the postmaster (backends and auxiliary processes)."""
        count = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    count += int(_stat_fields(int(entry))[1]) == self.pid
        return count

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, SUPERUSER, SUPERUSER)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, SUPERUSER, SUPERUSER)
        pwfile.chmod(0o600)
        done = subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("--pgdata", str(self.data), "--username", SUPERUSER),
                f"--pwfile={pwfile}",
                "--auth-local=trust",  # the socket is in our private directory
                "--auth-host=scram-sha-256",  # over TCP, as a deployment would
                *("--encoding=UTF8", "--locale=C"),
                "--no-sync",  # initdb's own files only; the server then runs with fsync on
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE_S,
            check=False,
            cwd=self.folder,
            **self._as_user,
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            if self._launch():
                break
        else:
            raise RuntimeError(f"postgres did not start: {_log_tail(self.folder / 'pg.log')}")
        import psycopg  # noqa: PLC0415 -- the cluster extra

        admin = self.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def _launch(self) -> bool:
        import psycopg  # noqa: PLC0415

        settings = [f"--{key}={value}" for key, value in DURABLE_SETTINGS.items()]
        with open(self.folder / "pg.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    *("-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1"),
                    *("-k", str(self.folder), *settings),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                **self._as_user,
            )
        admin = self.url.rsplit("/", 1)[0] + "/postgres"
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                psycopg.connect(admin, connect_timeout=2).close()
            except psycopg.OperationalError:
                time.sleep(0.05)
                continue
            return True
        self.stop()
        raise RuntimeError(f"postgres not ready: {_log_tail(self.folder / 'pg.log')}")

    def settings(self) -> dict[str, str]:
        """What the running server says of its durability (read back, not assumed)."""
        import psycopg  # noqa: PLC0415

        names = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
        out = {}
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in names:
                row = conn.execute(f"SHOW {name}").fetchone()
                out[name] = "?" if row is None else str(row[0])
        return out

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster we started; then SIGQUIT, SIGKILL."""
        process, self.process = self.process, None
        if process is None:
            return
        for how in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(how)
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                continue
            return


class Redis:
    """A redis-server of the bench's own: AOF on (everysec), noeviction."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid, children=False)

    def client(self) -> Any:
        import redis  # noqa: PLC0415

        return redis.Redis.from_url(self.url, socket_timeout=10)

    def start(self) -> None:
        for _ in range(3):
            self.port = free_port()
            if self._launch():
                return
        raise RuntimeError(f"redis-server did not start: {_log_tail(self.folder / 'redis.log')}")

    def _launch(self) -> bool:
        import redis  # noqa: PLC0415

        command = [
            redis_server(),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
            *("--maxmemory-policy", "noeviction", "--save", ""),
            *("--protected-mode", "no", "--daemonize", "no"),
            *("--logfile", str(self.folder / "redis.log")),
        ]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.folder
            )
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    if client.ping() and client.info("persistence")["loading"] == 0:
                        return True
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server not ready: {_log_tail(self.folder / 'redis.log')}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE_S)


@contextlib.contextmanager
def engines() -> Iterator[tuple[Postgres, Redis]]:
    """A fresh PostgreSQL and Redis, stopped (by PID) and removed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="sealroom-bench-engines-"))
    folder.chmod(0o711)  # the postgres user must reach its own folder inside
    (folder / "pg").mkdir()
    (folder / "redis").mkdir()
    postgres, redis_engine = Postgres(folder / "pg"), Redis(folder / "redis")
    try:
        postgres.start()
        redis_engine.start()
        yield postgres, redis_engine
    finally:
        redis_engine.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)
