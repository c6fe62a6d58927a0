"""Timing tells which accounts have old hashes: a wrong password must cost the same whatever
argon2 parameters the account's stored hash was made with.

After an operator raises ``auth.argon2``, the hashes already stored keep their old (cheaper)
parameters until each account's next login. Checked alone, such a hash fails fast (the
review measured 4.5 ms instead of 92 ms), so the time of ``ERR auth-failed`` told an attacker
which accounts have not logged in since, and hold the weakest hashes. Every failure now
costs at least one verification at the configured parameters, and rehash-on-login still
upgrades the old hash.

The timing tests use cheap but distinct parameters (configured: about 7 ms a verification
here; old: argon2's cheapest, about 0.03 ms) and compare medians of interleaved rounds with
ratio bounds, wide enough for a busy two-core machine and far from the 200-fold gap they
catch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import argon2
import pytest
from argon2.profiles import CHEAPEST

from sealroom.policy.auth import Authenticator, password_hasher
from sealroom.store.sqlite import SqliteStore

PASSWORD = "correct horse battery"
WRONG = "wrong horse battery"
CONFIGURED = {"time_cost": 2, "memory_cost_kib": 8192, "parallelism": 1}
OLD = {
    "time_cost": CHEAPEST.time_cost,
    "memory_cost_kib": CHEAPEST.memory_cost,
    "parallelism": CHEAPEST.parallelism,
}
ROUNDS = 41
# A failure against an old hash may cost its own (cheap) check on top of a configured one; a
# leak shows up as a ratio near 0.005, so these bounds only have to absorb machine noise.
SAME_TIME = (0.7, 1.45)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "sealroom.db") as opened:
        yield opened


@pytest.fixture
def auth(store: SqliteStore) -> Authenticator:
    authenticator = Authenticator(store, **CONFIGURED, max_concurrent=1, wait_s=30)
    store.add_account("fresh", password_hasher(**CONFIGURED).hash(PASSWORD))
    store.add_account("old", old_hash())
    store.add_account("broken", "not-an-argon2-hash")
    return authenticator


def old_hash() -> str:
    return password_hasher(**OLD).hash(PASSWORD)


def stored_hash(store: SqliteStore, name: str) -> str:
    account = store.get_account(name)
    assert account is not None
    return account.password_hash


def medians(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each case, run in turn round after round so drift hits them all."""
    for run in cases.values():  # warm up: first allocations, SQLite's page cache
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, run in cases.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(samples) for name, samples in times.items()}


def report(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in figures.items())


def test_a_wrong_password_costs_the_same_whatever_the_stored_parameters(
    auth: Authenticator,
) -> None:
    figures = medians(
        {
            "current hash": lambda: auth.verify_login("fresh", WRONG),
            "old hash": lambda: auth.verify_login("old", WRONG),
            "unknown name": lambda: auth.verify_login("nobody", WRONG),
            "corrupt hash": lambda: auth.verify_login("broken", WRONG),
        }
    )
    print(f"auth-failed medians over {ROUNDS} rounds: {report(figures)}")
    reference = figures["current hash"]
    low, high = SAME_TIME
    for name, seconds in figures.items():
        assert low <= seconds / reference <= high, f"{name}: {report(figures)}"


def test_the_right_password_on_an_old_hash_costs_about_one_configured_run(
    auth: Authenticator, store: SqliteStore
) -> None:
    """The success path stays reasonable: the old hash's own check plus the rehash, not two
    configured runs on top of it."""
    stale = old_hash()

    def login_with_old_hash() -> object:
        store.set_password_hash("old", stale)  # upgraded by every login: make it old again
        return auth.verify_login("old", PASSWORD)

    def login_with_current_hash() -> object:
        store.set_password_hash("fresh", stored_hash(store, "fresh"))  # the same store work
        return auth.verify_login("fresh", PASSWORD)

    figures = medians({"current hash": login_with_current_hash, "old hash": login_with_old_hash})
    print(f"successful login medians over {ROUNDS} rounds: {report(figures)}")
    assert figures["old hash"] / figures["current hash"] <= 1.6, report(figures)


class RecordingHasher(argon2.PasswordHasher):
    """The configured hasher, noting which hash each verification ran against."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=CONFIGURED["time_cost"],
            memory_cost=CONFIGURED["memory_cost_kib"],
            parallelism=CONFIGURED["parallelism"],
        )
        self.verified: list[str | bytes] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(hash)
        return super().verify(hash, password)


def test_which_verifications_run(auth: Authenticator, store: SqliteStore) -> None:
    hasher = RecordingHasher()
    auth._hasher = hasher
    stale, current = stored_hash(store, "old"), stored_hash(store, "fresh")
    dummy = auth._dummy_hash

    assert auth.verify_login("old", WRONG) is None
    assert hasher.verified == [stale, dummy]  # its own check, then the configured price
    assert stored_hash(store, "old") == stale  # a failure never rehashes

    hasher.verified.clear()
    assert auth.verify_password("old", WRONG) is False  # /passwd OLD NEW: the same rule
    assert hasher.verified == [stale, dummy]

    hasher.verified.clear()
    assert auth.verify_login("fresh", WRONG) is None
    assert hasher.verified == [current]  # a current hash: exactly one verification, as before

    hasher.verified.clear()
    assert auth.verify_login("broken", WRONG) is None
    assert hasher.verified == ["not-an-argon2-hash", dummy]


def test_rehash_on_login_still_upgrades_the_old_hash(
    auth: Authenticator, store: SqliteStore
) -> None:
    assert (
        argon2.extract_parameters(stored_hash(store, "old")).memory_cost == OLD["memory_cost_kib"]
    )
    assert auth.verify_login("old", PASSWORD) is not None
    upgraded = argon2.extract_parameters(stored_hash(store, "old"))
    assert (upgraded.time_cost, upgraded.memory_cost) == (2, 8192)
    assert auth.verify_login("old", PASSWORD) is not None
    assert auth.verify_login("old", WRONG) is None
