"""A login flood against an expensive argon2 setting.

Each verification costs ``memory_cost_kib`` of memory, so at most
``auth.max_concurrent_verifications`` run at once; the rest wait ``verification_wait_s`` and
are told ``ERR server-busy``. The server's memory is therefore bounded by slots x memory cost
whatever the number of attackers, and chat between logged-in users goes on unaffected:
argon2 runs without the GIL, on at most that many cores.
"""

from __future__ import annotations

import threading
import time

import pytest

from adversary import (
    ATTACKER_ADDRESSES,
    MIB,
    PeakRss,
    percentile,
    round_trip,
)
from helpers import Client, ServerFactory

MEMORY_COST_KIB = 64 * 1024
SLOTS = 2
FLOODERS = 12
FLOOD_SECONDS = 3.0


@pytest.mark.slow
def test_login_flood_is_bounded_and_chat_goes_on(make_server: ServerFactory) -> None:
    server = make_server(
        auth={
            "argon2": {"time_cost": 2, "memory_cost_kib": MEMORY_COST_KIB, "parallelism": 1},
            "max_concurrent_verifications": SLOTS,
            "verification_wait_s": 0.3,
        },
        rate={
            "logins_per_ip": {"rate": 1000, "burst": 1000},  # the slots, not the bucket, decide
            "errors": {"rate": 1000, "burst": 1000},
        },
    )
    alice = server.user("alice")  # logged in (and rehashed) before the flood
    bob = server.user("bob")
    alice.expect("JOIN #lobby bob")
    replies: list[str] = []
    stop = threading.Event()
    flooders = [server.client(source=ATTACKER_ADDRESSES[i % 2]) for i in range(FLOODERS)]

    def flood(client: Client, n: int) -> None:
        while not stop.is_set():
            try:
                replies.append(client.request(f"/login nobody{n} guess", timeout=10))
            except (OSError, EOFError, TimeoutError):
                return

    threads = [threading.Thread(target=flood, args=(c, n)) for n, c in enumerate(flooders)]
    latencies: list[float] = []
    try:
        with PeakRss() as memory:
            for thread in threads:
                thread.start()
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < FLOOD_SECONDS:
                latencies.append(round_trip(alice, f"p{n}"))
                assert alice.request(f"chat {n}").startswith("OK say #lobby")
                assert bob.line(timeout=5) == f"MSG #lobby alice chat {n}"
                n += 1
                time.sleep(0.01)
            stop.set()
            for thread in threads:
                thread.join(timeout=15)
    finally:
        stop.set()
        for client in flooders:
            client.close()
    assert not any(thread.is_alive() for thread in threads)
    busy = sum(r.startswith("ERR server-busy") for r in replies)
    failed = sum(r.startswith("ERR auth-failed") for r in replies)
    assert busy + failed == len(replies), set(replies)
    assert busy > 0, "the flood never filled the verification slots"
    assert failed > 0, "no verification ran at all"
    # Memory: what the slots allow, plus room for thread stacks and TLS buffers. Without the
    # bound, FLOODERS verifications at once would need FLOODERS x 64 MiB.
    bound = SLOTS * MEMORY_COST_KIB * 1024 + 48 * MIB
    assert memory.growth < bound, f"grew {memory.growth / MIB:.0f} MiB, bound {bound / MIB:.0f}"
    assert memory.growth > MEMORY_COST_KIB * 1024 // 2, "argon2 did not run at this cost"
    # Honest chat: generous bounds, because CI machines are noisy.
    assert len(latencies) >= 10
    assert percentile(latencies, 0.5) < 0.25, sorted(latencies)
    assert percentile(latencies, 0.99) < 1.5, sorted(latencies)
