"""Password authentication: same answer and same work for every failure, bounded concurrency."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import argon2
import pytest
from argon2.profiles import CHEAPEST

from sealroom.core.errors import ErrorCode
from sealroom.policy.auth import Authenticator, ServerBusy
from sealroom.store.sqlite import SqliteStore

PASSWORD = "correct horse battery"
WRONG = "wrong horse battery"
EVENT_TIMEOUT_S = 30  # only a guard against a hung test; never reached when things work


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "sealroom.db") as opened:
        yield opened


@pytest.fixture
def auth(store: SqliteStore) -> Authenticator:
    return Authenticator.for_tests(store)


def add_user(auth: Authenticator, store: SqliteStore, name: str = "alice") -> None:
    store.add_account(name, auth.hash_password(PASSWORD))


def stored_hash(store: SqliteStore, name: str) -> str:
    account = store.get_account(name)
    assert account is not None
    return account.password_hash


class RecordingHasher(argon2.PasswordHasher):
    """The cheapest hasher, noting which stored hash each verification ran against."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=CHEAPEST.time_cost,
            memory_cost=CHEAPEST.memory_cost,
            parallelism=CHEAPEST.parallelism,
        )
        self.verified_hashes: list[str | bytes] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified_hashes.append(hash)
        return super().verify(hash, password)


def recording(auth: Authenticator) -> RecordingHasher:
    hasher = RecordingHasher()
    auth._hasher = hasher
    return hasher


# -- the answers --------------------------------------------------------------------------


def test_login_succeeds_and_is_recorded(auth: Authenticator, store: SqliteStore) -> None:
    add_user(auth, store)
    account = auth.verify_login("alice", PASSWORD)
    assert account is not None
    assert account.name == "alice"
    assert account.last_login is not None
    stored = store.get_account("alice")
    assert stored is not None
    assert stored.last_login == account.last_login


def test_wrong_password(auth: Authenticator, store: SqliteStore) -> None:
    add_user(auth, store)
    assert auth.verify_login("alice", WRONG) is None
    stored = store.get_account("alice")
    assert stored is not None
    assert stored.last_login is None


def test_unknown_name(auth: Authenticator) -> None:
    assert auth.verify_login("nobody", PASSWORD) is None


def test_disabled_account_fails_even_with_the_right_password(
    auth: Authenticator, store: SqliteStore
) -> None:
    add_user(auth, store)
    store.set_enabled("alice", False)
    assert auth.verify_login("alice", PASSWORD) is None
    stored = store.get_account("alice")
    assert stored is not None
    assert stored.last_login is None
    store.set_enabled("alice", True)
    assert auth.verify_login("alice", PASSWORD) is not None


def test_verify_password(auth: Authenticator, store: SqliteStore) -> None:
    add_user(auth, store)
    assert auth.verify_password("alice", PASSWORD)
    assert not auth.verify_password("alice", WRONG)
    assert not auth.verify_password("nobody", PASSWORD)
    store.set_enabled("alice", False)
    assert not auth.verify_password("alice", PASSWORD)
    stored = store.get_account("alice")
    assert stored is not None
    assert stored.last_login is None  # checking a password is not a login


# -- every failure does the same work -----------------------------------------------------


def test_each_failure_runs_exactly_one_verification(
    auth: Authenticator, store: SqliteStore
) -> None:
    add_user(auth, store)
    add_user(auth, store, "bob")
    store.set_enabled("bob", False)
    real_hash = stored_hash(store, "alice")
    hasher = recording(auth)

    assert auth.verify_login("nobody", PASSWORD) is None
    assert auth.verify_login("alice", WRONG) is None
    assert auth.verify_login("bob", PASSWORD) is None

    assert hasher.verified_hashes == [auth._dummy_hash, real_hash, auth._dummy_hash]


def test_dummy_hash_has_the_real_parameters(auth: Authenticator, store: SqliteStore) -> None:
    add_user(auth, store)
    real_hash = stored_hash(store, "alice")
    assert argon2.extract_parameters(auth._dummy_hash) == argon2.extract_parameters(real_hash)


def test_disabled_password_is_never_checked_against_the_real_hash(
    auth: Authenticator, store: SqliteStore
) -> None:
    add_user(auth, store)
    store.set_enabled("alice", False)
    real_hash = stored_hash(store, "alice")
    hasher = recording(auth)
    assert not auth.verify_password("alice", PASSWORD)
    assert auth.verify_login("alice", PASSWORD) is None
    assert real_hash not in hasher.verified_hashes


def test_corrupt_stored_hash_fails_and_is_logged_without_the_password(
    auth: Authenticator, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.add_account("alice", "not-an-argon2-hash")
    with caplog.at_level(logging.WARNING, logger="sealroom.auth"):
        assert auth.verify_login("alice", PASSWORD) is None
    assert "alice" in caplog.text
    assert PASSWORD not in caplog.text


def test_unexpected_errors_propagate_and_free_the_slot(store: SqliteStore) -> None:
    auth = Authenticator.for_tests(store, max_concurrent=1, wait_s=0)

    class BrokenHasher(RecordingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            raise RuntimeError("a bug, not a failed login")

    add_user(auth, store)
    auth._hasher = BrokenHasher()
    with pytest.raises(RuntimeError, match="a bug"):
        auth.verify_login("alice", PASSWORD)
    auth._hasher = RecordingHasher()
    assert auth.verify_login("alice", PASSWORD) is not None


# -- rehash on login ----------------------------------------------------------------------


def stronger(store: SqliteStore) -> Authenticator:
    return Authenticator(
        store,
        time_cost=CHEAPEST.time_cost + 1,
        memory_cost_kib=CHEAPEST.memory_cost,
        parallelism=CHEAPEST.parallelism,
        max_concurrent=1,
        wait_s=5,
    )


def test_login_upgrades_a_hash_made_with_older_parameters(
    auth: Authenticator, store: SqliteStore
) -> None:
    add_user(auth, store)
    old_hash = stored_hash(store, "alice")
    assert argon2.extract_parameters(old_hash).time_cost == 1

    assert stronger(store).verify_login("alice", PASSWORD) is not None

    new_hash = stored_hash(store, "alice")
    assert new_hash != old_hash
    assert argon2.extract_parameters(new_hash).time_cost == 2
    assert stronger(store).verify_login("alice", PASSWORD) is not None


def test_failed_login_does_not_rehash(auth: Authenticator, store: SqliteStore) -> None:
    add_user(auth, store)
    old_hash = stored_hash(store, "alice")
    assert stronger(store).verify_login("alice", WRONG) is None
    assert stored_hash(store, "alice") == old_hash


def test_current_hash_is_left_alone(auth: Authenticator, store: SqliteStore) -> None:
    add_user(auth, store)
    old_hash = stored_hash(store, "alice")
    assert auth.verify_login("alice", PASSWORD) is not None
    assert stored_hash(store, "alice") == old_hash


def test_rehash_does_not_overwrite_a_password_changed_meanwhile(
    auth: Authenticator, store: SqliteStore
) -> None:
    add_user(auth, store)
    changed_hash = auth.hash_password("a brand new password")
    upgrading = stronger(store)

    class ChangedDuringLogin(RecordingHasher):
        def check_needs_rehash(self, hash: str | bytes) -> bool:
            store.set_password_hash("alice", changed_hash)  # the CLI, between verify and write
            return True

    upgrading._hasher = ChangedDuringLogin()
    upgrading.verify_login("alice", PASSWORD)
    assert stored_hash(store, "alice") == changed_hash


@pytest.mark.parametrize("change", ["disable", "remove"])
def test_account_changed_during_verification_does_not_log_in(
    auth: Authenticator, store: SqliteStore, change: str
) -> None:
    add_user(auth, store)

    class ChangedDuringVerify(RecordingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            result = super().verify(hash, password)
            if change == "disable":
                store.set_enabled("alice", False)
            else:
                store.remove_account("alice")
            return result

    auth._hasher = ChangedDuringVerify()
    assert auth.verify_login("alice", PASSWORD) is None


# -- bounded concurrency ------------------------------------------------------------------


class BlockingHasher(RecordingHasher):
    """Holds its verification slot until the test lets go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.entered.set()
        self.release.wait(EVENT_TIMEOUT_S)
        return super().verify(hash, password)


def test_server_busy_when_every_slot_is_taken(store: SqliteStore) -> None:
    auth = Authenticator.for_tests(store, max_concurrent=1, wait_s=0.01)
    add_user(auth, store)
    blocking = BlockingHasher()
    auth._hasher = blocking
    results: list[object] = []
    holder = threading.Thread(target=lambda: results.append(auth.verify_login("alice", PASSWORD)))
    holder.start()
    try:
        assert blocking.entered.wait(EVENT_TIMEOUT_S)
        with pytest.raises(ServerBusy) as caught:
            auth.verify_login("alice", PASSWORD)
        with pytest.raises(ServerBusy):
            auth.verify_password("alice", PASSWORD)
        with pytest.raises(ServerBusy):
            auth.hash_password(PASSWORD)
    finally:
        blocking.release.set()
        holder.join()
    assert caught.value.code is ErrorCode.SERVER_BUSY
    assert caught.value.wire().startswith("ERR server-busy ")
    assert PASSWORD not in str(caught.value)
    assert len(results) == 1
    assert results[0] is not None
    # The slot is free again.
    assert auth.verify_login("alice", PASSWORD) is not None


def test_a_waiting_caller_gets_the_slot_when_it_frees(store: SqliteStore) -> None:
    auth = Authenticator.for_tests(store, max_concurrent=1, wait_s=EVENT_TIMEOUT_S)
    add_user(auth, store)
    blocking = BlockingHasher()
    auth._hasher = blocking
    results: list[object] = []

    def login() -> None:
        results.append(auth.verify_login("alice", PASSWORD))

    threads = [threading.Thread(target=login) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert blocking.entered.wait(EVENT_TIMEOUT_S)
    blocking.release.set()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert all(result is not None for result in results)


def test_never_more_verifications_than_slots(store: SqliteStore) -> None:
    auth = Authenticator.for_tests(store, max_concurrent=2, wait_s=EVENT_TIMEOUT_S)
    add_user(auth, store)
    lock = threading.Lock()
    running = 0
    peak = 0

    class CountingHasher(RecordingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                return super().verify(hash, password)
            finally:
                with lock:
                    running -= 1

    auth._hasher = CountingHasher()
    threads = [
        threading.Thread(target=auth.verify_login, args=("alice", PASSWORD)) for _ in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= peak <= 2


# -- hashing and construction -------------------------------------------------------------


def test_hash_password_uses_argon2id_with_the_given_parameters(store: SqliteStore) -> None:
    @dataclass(frozen=True)
    class Settings:
        time_cost: int = 2
        memory_cost_kib: int = 16
        parallelism: int = 1

    auth = Authenticator.from_settings(store, Settings(), max_concurrent=1, wait_s=1)
    hashed = auth.hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$")
    params = argon2.extract_parameters(hashed)
    assert (params.time_cost, params.memory_cost, params.parallelism) == (2, 16, 1)
    assert PASSWORD not in hashed
    assert hashed != auth.hash_password(PASSWORD)  # salted


@pytest.mark.parametrize("password", ["short", "x" * 1025, "tab\tok but bell \x07 not"])
def test_hash_password_refuses_passwords_outside_the_rules(
    auth: Authenticator, password: str
) -> None:
    with pytest.raises(ValueError, match="password") as caught:
        auth.hash_password(password)
    assert password not in str(caught.value)


@pytest.mark.parametrize(("max_concurrent", "wait_s"), [(0, 1.0), (1, -1.0)])
def test_bad_construction(store: SqliteStore, max_concurrent: int, wait_s: float) -> None:
    with pytest.raises(ValueError, match="must"):
        Authenticator.for_tests(store, max_concurrent=max_concurrent, wait_s=wait_s)
