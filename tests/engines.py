"""Real database engines for the tests and the bench, started when needed and stopped by PID.

:class:`PostgresEngine` runs Debian's PostgreSQL from a temporary directory: ``initdb`` into
it, ``postgres`` on a free 127.0.0.1 port with its socket in the same directory, each test
given a fresh database of its own (``CREATE DATABASE`` from a template is quick, about as
quick as opening a new SQLite file). PostgreSQL refuses to run as root, so as root both run
as the ``postgres`` user, which owns the directory; as anyone else they run as that user.

:class:`RedisEngine` runs Debian's ``redis-server`` the same way, from a temporary directory
on a free 127.0.0.1 port, with its append-only file on by default so that the fault tests
(kill, start again, pause) see what a deployment would. Redis is content to run as root.

No engine is looked for on the network and none listens beyond the loopback address.

The bench's cluster scenarios start these same engines (bench/engines.py), PostgreSQL with
other settings: durable, as deployed, where the tests' runs with fsync off. The bench also
reads their CPU time, :meth:`PostgresEngine.cpu_seconds` and :meth:`RedisEngine.cpu_seconds`:
utime + stime of the engine's processes from ``/proc``, and of those that ended. For
PostgreSQL that is the postmaster plus every live child (one backend per connection, the WAL
writer, the checkpointer, ...) plus the postmaster's ``cutime`` and ``cstime``: the CPU of
children it has already reaped (backends of closed connections). For Redis it is the server
(all its threads) plus ``cutime``/``cstime`` (an AOF rewrite runs in a forked child).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

# initdb and the first start on a busy 2-core machine (or one the bench keeps busy)
STARTUP_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0
SUPERUSER = "postgres"
TEMPLATE = "template_sealroom"
TICKS = os.sysconf("SC_CLK_TCK")

# Throwaway data: durability off, so databases and commits cost no fsync. Never in production.
TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",
    "log_min_messages": "warning",
}


def postgres_bindir() -> Path:
    """The directory holding a matching ``initdb`` and ``postgres``.

    ``$SEALROOM_PG_BINDIR`` wins; then an ``initdb`` on PATH (followed through symlinks to
    its directory, where ``postgres`` lives too); then Debian's /usr/lib/postgresql/N/bin,
    newest N first. ``make system-deps`` installs Debian's when none is found.
    """
    candidates: list[Path] = []
    if configured := os.environ.get("SEALROOM_PG_BINDIR"):
        candidates.append(Path(configured))
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: _version_key(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise RuntimeError(
        "PostgreSQL's initdb and postgres were not found (looked in $SEALROOM_PG_BINDIR, "
        "PATH and /usr/lib/postgresql/*/bin); `make system-deps` installs Debian's postgresql"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
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


class PostgresEngine:
    """A PostgreSQL server of our own, for one test session (or one bench scenario)."""

    def __init__(self, folder: Path, bindir: Path, settings: Mapping[str, str]) -> None:
        self.folder = folder
        self.bindir = bindir
        self.server_settings = dict(settings)
        self.data = folder / "data"
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        # As root, the engine's processes run as the postgres user (it refuses root).
        self._as_user: dict[str, Any] = (
            {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if os.geteuid() == 0 else {}
        )
        self.timings: dict[str, float] = {}

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, *, settings: Mapping[str, str] = TEST_SETTINGS, template: bool = True
    ) -> Iterator[Self]:
        """Initialise, start, and on the way out stop the engine and remove its files.

        ``settings`` are the server's (``--name=value``): the tests' throwaway ones unless
        told. ``template`` creates the database :meth:`new_database` copies; the bench, with
        one database of its own, does without (one database fewer for autovacuum to visit).
        """
        bindir = postgres_bindir()
        # Not under pytest's basetemp: that is private to root, and the engine is not root.
        folder = Path(tempfile.mkdtemp(prefix="sealroom-pg-"))
        engine = cls(folder, bindir, settings)
        try:
            if os.geteuid() == 0:
                shutil.chown(folder, SUPERUSER, SUPERUSER)
            engine._initdb()
            engine._start(template=template)
            yield engine
        finally:
            engine.stop()
            shutil.rmtree(folder, ignore_errors=True)

    # -- life -----------------------------------------------------------------------------

    def _initdb(self) -> None:
        started = time.monotonic()
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, SUPERUSER, SUPERUSER)
        pwfile.chmod(0o600)
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",  # the socket is in our private directory
            "--auth-host=scram-sha-256",  # over TCP, as a deployment would: a password
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # initdb's own files only; the server then runs with its settings
            "--no-instructions",
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=STARTUP_DEADLINE_S,
            check=False,
            cwd=self.folder,
            **self._as_user,
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
        self.timings["initdb_s"] = time.monotonic() - started

    def _start(self, *, template: bool) -> None:
        started = time.monotonic()
        deadline = started + STARTUP_DEADLINE_S
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            if self._launch(deadline):
                break
        else:
            raise RuntimeError(f"postgres did not start: {self._log_tail()}")
        if template:
            self.create_database(TEMPLATE)
        self.timings["start_s"] = time.monotonic() - started

    def _launch(self, deadline: float) -> bool:
        """Start postgres; True once it accepts connections, False if it exited."""
        settings = [f"--{key}={value}" for key, value in self.server_settings.items()]
        log = open(self.folder / "postgres.log", "ab")  # noqa: SIM115 -- handed to the child
        with log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.folder),
                    *settings,
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                **self._as_user,
            )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self._accepts_connections():
                return True
            time.sleep(0.02)
        raise RuntimeError(f"postgres not ready within {STARTUP_DEADLINE_S}s: {self._log_tail()}")

    def _accepts_connections(self) -> bool:
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def start(self) -> None:
        """Start again after :meth:`stop`: the same data directory and port, so URLs handed
        out before (and the databases behind them) work again."""
        if self.process is not None:
            raise RuntimeError("postgres is already running")
        if not self._launch(time.monotonic() + STARTUP_DEADLINE_S):
            raise RuntimeError(f"postgres did not start again: {self._log_tail()}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster we started; immediate, then kill, if slow."""
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

    def _log_tail(self) -> str:
        try:
            text = (self.folder / "postgres.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-5:])

    @property
    def pid(self) -> int:
        """The postmaster's."""
        if self.process is None:
            raise RuntimeError("postgres is not running")
        return self.process.pid

    def cpu_seconds(self) -> float:
        """The postmaster, its live children, and the children it has reaped."""
        return tree_cpu_seconds(self.pid, children=True)

    def settings(self) -> dict[str, str]:
        """What the running server says of its durability (read back, not assumed)."""
        names = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
        out = {}
        with self.admin() as conn:
            for name in names:
                row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
                out[name] = "?" if row is None else str(row[0])
        return out

    # -- databases ------------------------------------------------------------------------

    def url(self, database: str, *, user: str = SUPERUSER, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{quote(secret, safe='')}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection in autocommit mode (CREATE DATABASE needs it)."""
        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """An empty database called ``name`` (a copy of ``template`` if given, else of
        PostgreSQL's own template1); its URL, with the password."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(query)
        return self.url(name)

    def new_database(self) -> str:
        """A fresh, empty database (no Sealroom schema yet); its URL, with the password."""
        return self.create_database(f"test_{next(self._names)}", template=TEMPLATE)


# Every redis-server still running, by PID: killed when the interpreter exits, so that a test
# run stopped in the middle (or a fixture that never reached its finally) leaves none behind.
_REDIS_LIVE: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftover_redis() -> None:
    for process in list(_REDIS_LIVE.values()):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_DEADLINE_S)


def redis_server() -> str:
    """``redis-server`` on PATH, else Debian's; `make test` installs Debian's when neither."""
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("redis-server not found; `make test` installs Debian's redis-server")


class RedisEngine:
    """A redis-server of our own, started and stopped (or killed, paused) by its PID.

    ``kill()`` then ``start()`` is a crash and a restart: the same directory and port, so the
    append-only file is replayed and clients given :attr:`url` find the same data again.
    """

    def __init__(self, folder: Path, *, appendonly: bool, maxmemory_policy: str) -> None:
        self.folder = folder
        self.binary = redis_server()
        self.appendonly = appendonly
        self.maxmemory_policy = maxmemory_policy
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextlib.contextmanager
    def running(
        cls, *, appendonly: bool = True, maxmemory_policy: str = "noeviction"
    ) -> Iterator[Self]:
        """Start on a free port; on the way out stop it and remove its directory."""
        folder = Path(tempfile.mkdtemp(prefix="sealroom-redis-"))
        engine = cls(folder, appendonly=appendonly, maxmemory_policy=maxmemory_policy)
        try:
            for _ in range(3):  # the free port may be taken between probing and binding
                engine.port = free_port()
                if engine._launch():
                    break
            else:
                raise RuntimeError(f"redis-server did not start: {engine._log_tail()}")
            yield engine
        finally:
            engine.stop()
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def cpu_seconds(self) -> float:
        """The server (all its threads) and the children it has reaped (an AOF rewrite runs
        in a forked child; one still running is not counted)."""
        return tree_cpu_seconds(self.pid, children=False)

    def client(self, *, timeout: float = 5.0) -> redis.Redis:
        """A client that fails at once instead of retrying: the tests want to see faults."""
        return redis.Redis.from_url(
            self.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _launch(self) -> bool:
        """Start redis-server; True once it answers PING with its data loaded, False if it
        exited (the port was taken)."""
        command = [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
            *("--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"),
            *("--maxmemory-policy", self.maxmemory_policy, "--save", ""),
            *("--protected-mode", "no", "--daemonize", "no"),
            *("--logfile", str(self.folder / "redis.log")),
        ]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 -- handed to the child
        with log:  # redis-server logs there itself; this catches what it says before that
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.folder
            )
        _REDIS_LIVE[self.process.pid] = self.process
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _REDIS_LIVE.pop(self.process.pid, None)
                self.process = None
                return False
            if self._ready():
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"redis-server not ready within {STARTUP_DEADLINE_S}s: {self._log_tail()}"
        )

    def _ready(self) -> bool:
        """PING answered and the append-only file replayed (INFO persistence says loading:0)."""
        try:
            with self.client(timeout=1.0) as client:
                return bool(client.ping()) and client.info("persistence")["loading"] == 0
        except redis.exceptions.RedisError:  # refused, or BusyLoadingError while replaying
            return False

    def start(self) -> None:
        """Start again after kill() or stop(): same directory and port, so the AOF is replayed."""
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        if not self._launch():
            raise RuntimeError(f"redis-server did not start again: {self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would. Redis writes the AOF before it replies, so writes it
        acknowledged survive; everysec fsync only matters if the machine goes down too."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=STOP_DEADLINE_S)
            _REDIS_LIVE.pop(process.pid, None)

    def stop(self) -> None:
        """SIGTERM (redis-server writes its AOF and exits), then SIGKILL if slow."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused server would never act on SIGTERM
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_DEADLINE_S)
        self.kill()  # reaps it; SIGKILL only if it is still there

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def flush(self) -> None:
        """FLUSHALL, so that a server shared between tests starts each of them empty."""
        with self.client() as client:
            client.flushall()

    def _log_tail(self) -> str:
        try:
            text = (self.folder / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-5:])
