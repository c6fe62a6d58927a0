"""A `sealroom serve` child process for the scan and soak scripts, and what it costs.

Readiness is the server's own "listening on" log line (port 0 in the configuration, so the
port is read from it); its cost is read from /proc: resident memory, threads, descriptors.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path


def sealroom(*argv: str) -> None:
    """Run one `sealroom` command (from this interpreter's installation); fail loudly."""
    subprocess.run([sys.executable, "-m", "sealroom", *argv], check=True, timeout=120)


@dataclass(frozen=True)
class Cost:
    rss_kib: int
    threads: int
    fds: int

    def __str__(self) -> str:
        return f"rss {self.rss_kib / 1024:.1f} MiB, {self.threads} threads, {self.fds} fds"


class Serve:
    """`sealroom serve -c CONFIG` as a child process; its log goes to ``log``."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sealroom", "serve", "-c", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.port = 0
        self.log = log
        self.lines = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        with self.log.open("w") as log:
            for line in self.process.stderr:
                log.write(line)
                self.lines += 1
                match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if match and not self._ready.is_set():
                    self.port = int(match.group(1))
                    self._ready.set()
        self._ready.set()  # the process ended: wake the waiter either way

    def wait_ready(self, timeout: float = 30.0) -> int:
        if not self._ready.wait(timeout) or not self.port:
            raise SystemExit(f"sealroom serve did not start; see {self.log}")
        return self.port

    def cost(self) -> Cost:
        pid = self.process.pid
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        return Cost(
            rss_kib=int(status["VmRSS"].split()[0]),
            threads=int(status["Threads"]),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
        )

    def stop(self) -> int:
        """SIGTERM (graceful shutdown), then the exit status; killed if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._thread.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode
