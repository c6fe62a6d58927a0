"""`make soak`: mixed traffic with churn against a live `sealroom serve`, then a resource check.

For ``--minutes`` (SOAK_MINUTES), ``--clients`` workers from 127.0.0.1, .2 and .3 connect and
disconnect over and over: chatting in rooms, private messages, history, resume tokens, wrong
passwords, over-long lines, garbage and half handshakes, readers that stall until they are
dropped, sessions left to time out. The server's resident memory, threads and open
descriptors are printed at the start, every ``--every`` seconds and at the end; once every
client has gone they must be back near the baseline taken after a warm-up, or the soak fails.
Everything stays on loopback and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import astuple
from pathlib import Path

import yaml
from liveserver import Cost, Serve, sealroom

from sealroom.policy.auth import password_hasher
from sealroom.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "soak password 1"
USERS = [f"user{n}" for n in range(40)]
ROOMS = [f"#room{n}" for n in range(8)]
SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
ARGON2 = {"time_cost": 1, "memory_cost_kib": 4096, "parallelism": 1}
# What may be left over once every client has gone: threads and descriptors exactly, memory
# within allocator slack (freed memory is not always handed back to the system).
RSS_SLACK_KIB = 32 * 1024
FD_SLACK = 2


class Line:
    """A small blocking line client over TLS (the soak's own: scripts do not import tests)."""

    def __init__(self, port: int, context: ssl.SSLContext, source: str) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        try:
            self.sock = context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise
        self.buf = b""
        self.name = ""
        self.hello = self.line()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no line")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def request(self, text: str) -> str:
        self.send(text)
        while True:
            reply = self.line()
            if reply.startswith(("OK", "ERR", "BYE")):
                return reply

    def close(self) -> None:
        self.sock.close()


class Soak:
    def __init__(self, port: int, ca_file: Path, seconds: float, seed: int) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.seed = seed
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.lock = threading.Lock()

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def worker(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)  # noqa: S311 -- load, not secrets
        behaviours = [
            (self.chat, 40),
            (self.resume, 8),
            (self.wrong_passwords, 8),
            (self.long_line, 5),
            (self.garbage, 8),
            (self.half_handshake, 5),
            (self.stalled_reader, 3),
            (self.flooder, 3),
            (self.idle, 2),
        ]
        actions, weights = zip(*behaviours, strict=True)
        while self.running():
            action = rng.choices(actions, weights)[0]
            name = action.__name__
            try:
                action(rng)
            except (OSError, EOFError, TimeoutError, ssl.SSLError, AssertionError) as error:
                with self.lock:
                    self.failed[name] += 1
                    self.examples.setdefault(name, f"{type(error).__name__}: {error}")
            else:
                with self.lock:
                    self.done[name] += 1

    def client(self, rng: random.Random) -> Line:
        return Line(self.port, self.context, rng.choice(SOURCES))

    def login(self, rng: random.Random) -> Line:
        client = self.client(rng)
        name = rng.choice(USERS)
        reply = client.request(f"/login {name} {PASSWORD}")
        if not reply.startswith("OK login"):
            client.close()
            raise AssertionError(reply)
        client.name = name
        return client

    # -- behaviours -------------------------------------------------------------------------

    def chat(self, rng: random.Random) -> None:
        client = self.login(rng)
        try:
            for room in rng.sample(ROOMS, rng.randint(1, 3)):
                assert client.request(f"/join {room}").startswith("OK join"), room
            for n in range(rng.randint(3, 20)):
                assert client.request(f"hello {n} {'x' * rng.randint(1, 300)}").startswith("OK")
            assert client.request(f"/msg {rng.choice(USERS)} hi there").startswith(
                ("OK msg", "ERR rate-limited")
            )
            assert client.request("/who").startswith("OK who")
            assert client.request(f"/history {rng.choice(ROOMS)} 5").startswith(
                ("OK history", "ERR forbidden")  # history is for members
            )
            if rng.random() < 0.5:
                assert client.request("/quit") == "OK quit"
        finally:
            client.close()  # half the time without /quit: an abrupt close

    def resume(self, rng: random.Random) -> None:
        client = self.login(rng)
        try:
            token = client.request("/token").split(" ")[2]
        finally:
            client.close()
        again = self.client(rng)
        try:
            user = client.name if rng.random() < 0.8 else rng.choice(USERS)
            reply = again.request(f"/resume {user} {token}")
            expected = "OK login" if user == client.name else "ERR auth-failed"
            assert reply.startswith(expected), reply  # a token opens its own account only
        finally:
            again.close()

    def wrong_passwords(self, rng: random.Random) -> None:
        client = self.client(rng)
        try:
            for _ in range(3):
                reply = client.request(f"/login {rng.choice(USERS)} not the password")
                assert reply.startswith(("ERR auth-failed", "ERR rate-limited")), reply
        finally:
            client.close()

    def long_line(self, rng: random.Random) -> None:
        client = self.login(rng)
        try:
            client.sock.sendall(b"L" * rng.randint(5_000, 200_000) + b"\n")
            while not (reply := client.line()).startswith(("ERR", "OK", "BYE")):
                pass
            assert reply.startswith("ERR line-too-long"), reply
        finally:
            client.close()

    def garbage(self, rng: random.Random) -> None:
        with (
            socket.create_connection(
                ("127.0.0.1", self.port), timeout=5, source_address=(rng.choice(SOURCES), 0)
            ) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendall(rng.randbytes(rng.randint(1, 5000)))
            sock.recv(1024)

    def half_handshake(self, rng: random.Random) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        with socket.create_connection(
            ("127.0.0.1", self.port), timeout=5, source_address=(rng.choice(SOURCES), 0)
        ) as sock:
            sock.sendall(hello[: rng.randint(1, len(hello) - 1)])
            time.sleep(rng.uniform(0, 0.5))

    def stalled_reader(self, rng: random.Random) -> None:
        """Join the flood room and stop reading until the server drops us."""
        client = self.login(rng)
        try:
            assert client.request("/join #flood").startswith("OK join")
            time.sleep(min(4.0, max(0.0, self.deadline - time.monotonic())))
        finally:
            client.close()

    def flooder(self, rng: random.Random) -> None:
        client = self.login(rng)
        try:
            assert client.request("/join #flood").startswith("OK join")
            text = "f" * 2000
            for n in range(300):
                client.send(f"{n} {text}")
            replies = [client.line() for _ in range(300)]
            assert sum(r.startswith(("OK say", "ERR rate-limited")) for r in replies) > 0
        finally:
            client.close()

    def idle(self, rng: random.Random) -> None:
        client = self.login(rng)
        try:
            while True:
                line = client.line(timeout=15)
                if line.startswith("BYE"):
                    assert line == "BYE idle-timeout", line
                    return
        finally:
            client.close()


def settle(server: Serve, baseline: Cost, seconds: float) -> Cost:
    """Wait (bounded) for threads and descriptors to come back down; the last reading."""
    deadline = time.monotonic() + seconds
    while True:
        cost = server.cost()
        back = cost.threads <= baseline.threads and cost.fds <= baseline.fds + FD_SLACK
        if back or time.monotonic() >= deadline:
            return cost
        time.sleep(0.5)


def prepare(folder: Path) -> tuple[Path, Path]:
    sealroom("certs", "init", "--dir", str(folder / "certs"))
    config = folder / "sealroom.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": ["127.0.0.1:0"],
                "tls": {"cert": "certs/server.crt", "key": "certs/server.key"},
                "storage": {"database": "sealroom.db"},
                "auth": {"argon2": ARGON2},
                "limits": {
                    "max_connections_per_ip": 200,
                    "handshake_timeout_s": 2,
                    "login_timeout_s": 5,
                    "idle_timeout_s": 6,
                    "outbound_queue_bytes": 262144,
                },
                "rate": {
                    "messages": {"rate": 50, "burst": 200},
                    "logins_per_ip": {"rate": 200, "burst": 400},
                    "connections_per_ip": {"rate": 500, "burst": 1000},
                },
                "history": {"per_room": 200, "private_per_user": 50},
                "log": {"level": "info"},  # the "listening on" line is the readiness signal
            }
        )
    )
    hashed = password_hasher(**ARGON2).hash(PASSWORD)
    with SqliteStore(folder / "sealroom.db") as store:
        for name in USERS:
            store.add_account(name, hashed)
    return config, folder / "certs" / "ca.crt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between readings")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60 or not 1 <= args.clients <= 500:
        parser.error("minutes must be in (0, 1440] and clients in [1, 500]")
    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-", dir=ROOT / "var") as tmp:
        folder = Path(tmp)
        config, ca_file = prepare(folder)
        server = Serve(config, folder / "serve.log")
        try:
            return run(server, ca_file, args)
        finally:
            status = server.stop()
            print(f"server exit status {status}")
            log = server.log.read_text()
            errors = [line for line in log.splitlines() if " ERROR " in line]
            print(f"server log: {server.lines} lines, {len(errors)} at ERROR")
            for line in errors[:10]:
                print("  " + line)


def run(server: Serve, ca_file: Path, args: argparse.Namespace) -> int:
    port = server.wait_ready()
    # The warm-up runs at full concurrency, so that the baseline already holds what the
    # allocator keeps once that many threads have run (arenas, TLS buffers); what grows
    # beyond it over the soak is what the soak is looking for.
    warmup = Soak(port, ca_file, seconds=15, seed=args.seed + 1)
    warmers = [threading.Thread(target=warmup.worker, args=(n,)) for n in range(args.clients)]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join(timeout=60)
    quiet = settle(server, Cost(0, 0, 0), seconds=15)  # nothing to compare with yet
    time.sleep(2)
    baseline = server.cost()
    print(f"baseline (after warm-up, {quiet.threads} threads settled): {baseline}", flush=True)
    soak = Soak(port, ca_file, seconds=args.minutes * 60, seed=args.seed)
    workers = [threading.Thread(target=soak.worker, args=(n,)) for n in range(args.clients)]
    started = time.monotonic()
    for thread in workers:
        thread.start()
    peak = baseline
    while any(thread.is_alive() for thread in workers):
        for thread in workers:
            thread.join(timeout=args.every / len(workers))
        cost = server.cost()
        peak = Cost(*(max(a, b) for a, b in zip(astuple(peak), astuple(cost), strict=True)))
        ops = sum(soak.done.values())
        print(f"{time.monotonic() - started:7.0f}s  {cost}  ({ops} sessions done)", flush=True)
        if time.monotonic() > soak.deadline + 120:
            soak.stop.set()
    end = settle(server, baseline, seconds=30)
    print(f"peak:     {peak}")
    print(f"end:      {end}")
    print(f"baseline: {baseline}")
    print("done:   " + ", ".join(f"{k} {v}" for k, v in sorted(soak.done.items())))
    print("failed: " + ", ".join(f"{k} {v}" for k, v in sorted(soak.failed.items())))
    for name, example in sorted(soak.examples.items()):
        print(f"  e.g. {name}: {example}")
    problems = judge(server, soak, baseline, end)
    print("SOAK " + ("FAILED: " + "; ".join(problems) if problems else "PASSED"))
    return 1 if problems else 0


def judge(server: Serve, soak: Soak, baseline: Cost, end: Cost) -> list[str]:
    problems = []
    if end.threads > baseline.threads:
        problems.append(f"threads {end.threads} > baseline {baseline.threads}")
    if end.fds > baseline.fds + FD_SLACK:
        problems.append(f"fds {end.fds} > baseline {baseline.fds} + {FD_SLACK}")
    if end.rss_kib > baseline.rss_kib + RSS_SLACK_KIB:
        problems.append(f"rss {end.rss_kib} KiB > baseline {baseline.rss_kib} + {RSS_SLACK_KIB}")
    if server.process.poll() is not None:
        problems.append("the server died")
    if sum(soak.done.values()) == 0:
        problems.append("no client session completed")
    chat_failures = soak.failed["chat"] / max(1, soak.done["chat"] + soak.failed["chat"])
    if chat_failures > 0.02:
        problems.append(f"{chat_failures:.1%} of honest chat sessions failed")
    return problems


if __name__ == "__main__":
    sys.exit(main())
