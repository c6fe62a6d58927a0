"""Start a `sealroom serve` process for a scenario and read its CPU time and memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sealroom.config import Argon2Settings
from sealroom.policy.auth import ResumeTokens, password_hasher
from sealroom.store.sqlite import SqliteStore

# argon2 costs. CHEAP is for --quick and for servers nobody logs in to; every scenario that
# logs in uses at least ARGON2_8MIB (a cheaper one hid a memory problem: see
# docs/benchmarks.md), and the reconnect storm and the login flood the server's default.
CHEAP_ARGON2 = Argon2Settings(time_cost=1, memory_cost_kib=8, parallelism=1)
ARGON2_8MIB = Argon2Settings(time_cost=1, memory_cost_kib=8192, parallelism=1)
DEFAULT_ARGON2 = Argon2Settings()  # 64 MiB, time_cost 3, parallelism 4
PASSWORD = "bench password"
TICKS = os.sysconf("SC_CLK_TCK")

# Limits are raised so that the load, not the abuse protection, is what is measured.
BENCH_CONFIG: dict[str, Any] = {
    "listen": ["127.0.0.1:0"],
    "limits": {
        "max_connections": 20000,
        "max_connections_per_ip": 20000,
        "idle_timeout_s": 3600,
        "login_timeout_s": 600,
    },
    "rate": {
        "messages": {"rate": 1e6, "burst": 1e6},
        "logins_per_ip": {"rate": 1e6, "burst": 1e6},
        "connections_per_ip": {"rate": 1e6, "burst": 1e6},
    },
    "log": {"level": "warning"},
}


def argon2_config(cost: Argon2Settings) -> dict[str, int]:
    return {
        "time_cost": cost.time_cost,
        "memory_cost_kib": cost.memory_cost_kib,
        "parallelism": cost.parallelism,
    }


def argon2_label(cost: Argon2Settings) -> str:
    """``8mib``, ``64mib``, ``8kib``: the memory cost, which names the idle figures."""
    kib = cost.memory_cost_kib
    return f"{kib // 1024}mib" if kib % 1024 == 0 else f"{kib}kib"


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process, its ended threads included, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


@dataclass
class Workspace:
    """A folder with certificates, a configuration and a database."""

    root: Path
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.root / "sealroom.yaml"

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    @property
    def database(self) -> Path:
        return self.root / "var" / "sealroom.db"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SEALROOM_CONFIG": str(self.config)}

    port: int = 0
    web_port: int = 0  # the web door's, when configured with web=True
    argon2: Argon2Settings = CHEAP_ARGON2

    def configure(
        self,
        extra: dict[str, Any] | None = None,
        argon2: Argon2Settings = CHEAP_ARGON2,
        *,
        web: bool = False,
    ) -> None:
        """Write the configuration, on a free port picked now (logs stay at warning level
        during benchmarks, so the server's "listening on" line is not there to read), with
        the server's argon2 cost; accounts added after this are hashed at that cost. With
        ``web``, the web door listens too, on a second free port."""
        self.port = _free_port()
        self.argon2 = argon2
        config = merge(
            BENCH_CONFIG,
            {"listen": [f"127.0.0.1:{self.port}"], "auth": {"argon2": argon2_config(argon2)}},
        )
        if web:
            self.web_port = _free_port()
            config = merge(config, {"web": {"listen": f"127.0.0.1:{self.web_port}"}})
        self.config.write_text(yaml.safe_dump(merge(config, extra or {})))

    def sealroom(self, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sealroom", *argv],
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"sealroom {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def add_accounts(self, names: list[str]) -> None:
        """Bulk-create accounts with `sealroom user import`, all with one hash of PASSWORD
        made at the configured cost (fast to import; each check still costs a full
        verification, and the server finds nothing to rehash)."""
        cost = self.argon2
        password_hash = password_hasher(
            cost.time_cost, cost.memory_cost_kib, cost.parallelism
        ).hash(PASSWORD)
        source = self.root / "accounts.txt"
        source.write_text("".join(f"{name}:{password_hash}\n" for name in names))
        self.sealroom("user", "import", str(source))

    def issue_tokens(self, names: list[str]) -> dict[str, str]:
        """A resume token for each name, as each client would have got from /token in an
        earlier session (the server must not be running: this writes the database)."""
        with SqliteStore(self.database) as store:
            issuer = ResumeTokens(store, 7)
            return {name: issuer.issue(name)[0] for name in names}


@contextmanager
def workspace() -> Iterator[Workspace]:
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as folder:
        space = Workspace(Path(folder))
        space.configure()
        space.sealroom("certs", "init", "--dir", str(space.root / "certs"))
        space.sealroom("db", "init")  # account commands never create the database
        yield space


class ServerProcess:
    """A running `sealroom serve`; its port is read from its log, not guessed."""

    def __init__(
        self, space: Workspace, *, config: Path | None = None, port: int | None = None
    ) -> None:
        """The workspace's server, or (a cluster node) one with its own ``config`` file
        listening on ``port``."""
        env = space.env()
        if config is not None:
            env["SEALROOM_CONFIG"] = str(config)
        # BENCH_SERVER_SRC: serve from another checkout's src/ (an earlier commit), so that
        # before and after run under the same load generator in one sitting.
        other = os.environ.get("BENCH_SERVER_SRC")
        if other:
            env["PYTHONPATH"] = other
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sealroom", "serve"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.port = space.port if port is None else port
        self._profiler = None

        def pump() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line.rstrip())

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        if not wait_for(self._accepting, 60, interval=0.05):
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.log[-20:]))
        self._profiler: subprocess.Popen[bytes] | None = None
        profile = os.environ.get("BENCH_PROFILE")
        if profile:  # py-spy's collapsed stacks of the server, for the optimisation notes
            self._profiler = subprocess.Popen(
                [
                    _py_spy(),
                    "record",
                    "--pid",
                    str(self.pid),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--rate",
                    "250",
                    "-o",
                    f"{profile}.{self.pid}.txt",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _accepting(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("server exited:\n" + "\n".join(self.log[-20:]))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def kill(self) -> None:
        """``kill -9``, as a crash would; the process is reaped."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS:")

    def peak_rss_kib(self) -> int:
        """The high-water mark of resident memory since the process started."""
        return self._status_kib("VmHWM:")

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        return 0

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def stop(self) -> None:
        if self._profiler is not None:
            self._profiler.send_signal(2)  # SIGINT: py-spy writes its file and exits
            self._profiler.wait(30)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        if self.process.stderr:
            self.process.stderr.close()


@contextmanager
def server(space: Workspace) -> Iterator[ServerProcess]:
    process = ServerProcess(space)
    try:
        yield process
    finally:
        process.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _py_spy() -> str:
    """The venv's py-spy (``make bench`` does not put the venv on PATH), else PATH's."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"
