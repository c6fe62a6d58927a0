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

from sealroom.policy.auth import password_hasher

CHEAP_ARGON2 = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}
PASSWORD = "bench password"
TICKS = os.sysconf("SC_CLK_TCK")

# Limits are raised so that the load, not the abuse protection, is what is measured.
BENCH_CONFIG: dict[str, Any] = {
    "listen": ["127.0.0.1:0"],
    "auth": {"argon2": CHEAP_ARGON2},
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

    def configure(self, extra: dict[str, Any] | None = None) -> None:
        """Write the configuration, on a free port picked now (logs stay at warning level
        during benchmarks, so the server's "listening on" line is not there to read)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = merge(BENCH_CONFIG, {"listen": [f"127.0.0.1:{self.port}"]})
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

    def add_accounts(self, names: list[str], password_hash: str | None = None) -> None:
        """Bulk-create accounts with `sealroom user import` (one shared hash: fast)."""
        if password_hash is None:
            password_hash = password_hasher(1, 8, 1).hash(PASSWORD)
        source = self.root / "accounts.txt"
        source.write_text("".join(f"{name}:{password_hash}\n" for name in names))
        self.sealroom("user", "import", str(source))


@contextmanager
def workspace() -> Iterator[Workspace]:
    with tempfile.TemporaryDirectory(prefix="sealroom-bench-") as folder:
        space = Workspace(Path(folder))
        space.configure()
        space.sealroom("certs", "init", "--dir", str(space.root / "certs"))
        yield space


class ServerProcess:
    """A running `sealroom serve`; its port is read from its log, not guessed."""

    def __init__(self, space: Workspace) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sealroom", "serve"],
            env=space.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.port = space.port
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
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
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
