"""A real cluster for the tests: `sealroom serve` processes sharing a PostgreSQL and a Redis.

Each node is its own process with its own configuration file, listening on a free port of
127.0.0.1, .2 or .3, with its own control socket; every node names the same database and
Redis. Nodes are stopped by PID (SIGTERM, then SIGKILL); a test may kill, pause or restart
one. What a node logs goes to a file the test can read when it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from engines import free_port
from helpers import CHEAP_ARGON2, PASSWORD, Client, merge, wait_until, write_config
from sealroom.store.postgres import PostgresStore

REPO = Path(__file__).resolve().parent.parent
START_DEADLINE_S = 30.0
NODE_TIMEOUT_S = 2  # short, so that a dead node is noticed quickly in the tests


@dataclass
class Node:
    name: str
    host: str
    port: int
    folder: Path
    config: Path
    ca_file: Path
    process: subprocess.Popen[bytes] | None = None
    clients: list[Client] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.folder / "node.log"

    @property
    def control(self) -> Path:
        return self.folder / "control.sock"

    def start(self) -> None:
        """Start (again): until it listens, or fail with its log."""
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sealroom", "serve", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                return True
            return "listening on" in self.log.read_text(errors="replace")[offset:]

        wait_until(ready, timeout=START_DEADLINE_S, what=f"node {self.name} listening")
        assert self.process.poll() is None, f"node {self.name} exited:\n{self.tail()}"

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def client(self, **kwargs: Any) -> Client:
        client = Client(self.port, self.ca_file, host=self.host, **kwargs)
        self.clients.append(client)
        return client

    def user(self, name: str, **kwargs: Any) -> Client:
        """A logged-in client of ``name`` (its login reply read)."""
        client = self.client(**kwargs)
        client.login(name)
        return client

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """``kill -9``: no goodbye to anyone."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a deadline; the exit status."""
        if self.process is None:
            return None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


class Cluster:
    """Nodes of one cluster, and its users (written to the shared database directly)."""

    def __init__(
        self,
        folder: Path,
        tls_files: Mapping[str, Path],
        postgres_url: str,
        redis_url: str,
        *,
        timeout_s: float = NODE_TIMEOUT_S,
    ) -> None:
        self.folder = folder
        self.tls_files = tls_files
        self.postgres_url = postgres_url
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self.nodes: list[Node] = []
        self._store = PostgresStore(postgres_url)
        self._hasher = PasswordHasher(
            time_cost=CHEAP_ARGON2["time_cost"],
            memory_cost=CHEAP_ARGON2["memory_cost_kib"],
            parallelism=CHEAP_ARGON2["parallelism"],
        )

    def config(self, name: str, host: str, port: int, extra: Mapping[str, Any]) -> dict[str, Any]:
        folder = self.folder / name
        return merge(
            {
                "listen": [f"{host}:{port}"],
                "tls": {"cert": str(self.tls_files["cert"]), "key": str(self.tls_files["key"])},
                "storage": {"database": self.postgres_url},
                "auth": {"argon2": CHEAP_ARGON2},
                "limits": {"shutdown_grace_s": 2, "handshake_timeout_s": 5},
                "rate": {
                    "messages": {"rate": 1000, "burst": 1000},
                    "logins_per_ip": {"rate": 100, "burst": 100},
                    "connections_per_ip": {"rate": 100, "burst": 100},
                },
                "control": {"socket": str(folder / "control.sock")},
                "cluster": {
                    "redis": self.redis_url,
                    "node": name,
                    "node_timeout_s": self.timeout_s,
                },
            },
            extra,
        )

    def node(self, name: str, host: str = "127.0.0.1", **extra: Any) -> Node:
        """A new node, started: ``extra`` is laid over its configuration."""
        folder = self.folder / name
        folder.mkdir(parents=True)
        port = free_port()
        config = write_config(folder, self.config(name, host, port, extra))
        node = Node(name, host, port, folder, config, self.tls_files["ca"])
        self.nodes.append(node)
        node.start()
        return node

    def add_user(self, name: str, *, admin: bool = False, password: str = PASSWORD) -> None:
        self._store.add_account(name, self._hasher.hash(password), is_admin=admin)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``sealroom ARGS -c CONFIG`` against the first node's configuration."""
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        return subprocess.run(
            [sys.executable, "-m", "sealroom", *args, "-c", str(self.nodes[0].config)],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def cli_with(
        self, config: Mapping[str, Any], *args: str, folder: Path
    ) -> subprocess.CompletedProcess[str]:
        """``sealroom ARGS`` with ``config`` written to ``folder`` (for a node that is not
        to run, or not to start)."""
        path = write_config(folder, config)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        return subprocess.run(
            [sys.executable, "-m", "sealroom", *args, "-c", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def close(self) -> None:
        for node in self.nodes:
            node.close_clients()
            node.stop()
        self._store.close()

    def logs(self) -> str:
        return "\n".join(f"--- {node.name}\n{node.tail()}" for node in self.nodes)


@contextlib.contextmanager
def running_cluster(
    folder: Path, tls_files: Mapping[str, Path], postgres_url: str, redis_url: str, **kwargs: Any
) -> Iterator[Cluster]:
    cluster = Cluster(folder, tls_files, postgres_url, redis_url, **kwargs)
    try:
        yield cluster
    finally:
        cluster.close()


def read_until(client: Client, wanted: str, timeout: float = 5.0) -> list[str]:
    """Lines up to and including the first that starts with ``wanted``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted!r} within {timeout}s; saw {seen}")
        line = client.line(remaining)
        seen.append(line)
        if line.startswith(wanted):
            return seen
