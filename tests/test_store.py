"""The store's contract, on both engines, then what only SQLite has.

Every test that takes ``store`` or ``database`` runs twice: on an SQLite file, and on a
PostgreSQL database of its own on a real server (conftest.py's ``postgres``, started once per
session). They say what any :class:`~sealroom.core.storage.Store` must do. SQLite's files,
pragmas and migrations are tested further down, on SQLite only; PostgreSQL's own concerns
(migrations, URLs and secrets, timeouts) are in test_store_postgres.py.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from helpers import FakeWallClock, wait_until
from sealroom.core.model import (
    AccountExists,
    NoSuchAccount,
    SchemaTooNew,
    StoredMessage,
    StoreError,
    iso_utc,
    utc_now,
)
from sealroom.core.storage import Store
from sealroom.store import sqlite as store_module
from sealroom.store import sqlite_schema as schema_module
from sealroom.store.postgres import PostgresStore
from sealroom.store.sqlite import MIGRATIONS, SqliteStore

Database = Path | str  # an SQLite file, or a PostgreSQL URL
NOW = "2026-01-01T00:00:00.000Z"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return tmp_path / "var" / "sealroom.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def open_at(database: Database, clock: Callable[[], datetime] = utc_now) -> Store:
    if isinstance(database, Path):
        return SqliteStore(database, clock=clock)
    return PostgresStore(database, clock=clock)


@pytest.fixture
def store(database: Database) -> Iterator[Store]:
    with open_at(database) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    """For what only a file database has: backups and checks of files."""
    with SqliteStore(tmp_path / "var" / "sealroom.db") as opened:
        yield opened


def message(
    message_id: int, *, room: str | None = None, to: str | None = None, sender: str = "alice"
) -> StoredMessage:
    return StoredMessage(message_id, room, to, sender, f"body {message_id}", NOW)


def later(days: int) -> str:
    return iso_utc(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=days))


# -- opening ------------------------------------------------------------------------------


def test_reopen_keeps_data(database: Database) -> None:
    with open_at(database) as store:
        store.add_account("alice", "hash-a", is_admin=True)
    with open_at(database) as store:
        account = store.get_account("alice")
    assert account is not None
    assert account.is_admin
    assert account.password_hash == "hash-a"


def test_closed_store_refuses_calls(database: Database) -> None:
    store = open_at(database)
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.count_accounts()


def test_a_new_database_is_sound(store: Store) -> None:
    assert store.check() == []
    assert store.count_accounts() == 0
    assert store.accounts_version() == 0


def test_location_names_the_database_without_secrets(database: Database, store: Store) -> None:
    if isinstance(database, Path):
        assert store.location == str(database)
    else:
        password = database.split(":")[2].split("@")[0]
        assert store.location.startswith("postgresql://postgres@127.0.0.1:")
        assert password not in store.location
        assert password not in repr(store)


# -- accounts -----------------------------------------------------------------------------


def test_add_and_get(database: Database) -> None:
    clock = FakeWallClock(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC))
    with open_at(database, clock=clock) as store:
        added = store.add_account("alice", "hash-a")
        assert added.name == "alice"
        assert not added.is_admin
        assert added.enabled
        assert added.created_at == "2024-05-01T12:00:00.123Z"
        assert added.last_login is None
        assert store.get_account("alice") == added
        assert store.get_account("bob") is None


def test_add_duplicate(store: Store) -> None:
    store.add_account("alice", "hash-a")
    with pytest.raises(AccountExists, match="alice"):
        store.add_account("alice", "hash-b", is_admin=True)
    account = store.get_account("alice")
    assert account is not None
    assert account.password_hash == "hash-a"
    assert not account.is_admin


@pytest.mark.parametrize("name", ["Alice", "", "bad name", "-x", "a" * 33])
def test_add_refuses_non_canonical_names(store: Store, name: str) -> None:
    with pytest.raises(ValueError, match="canonical"):
        store.add_account(name, "hash")
    assert store.count_accounts() == 0


def test_add_many_counts_only_the_new_ones(store: Store) -> None:
    store.add_account("alice", "hash-a")
    created = store.add_accounts([("bob", "hash-b"), ("alice", "other"), ("carol", "hash-c")])
    assert created == 2
    assert store.count_accounts() == 3
    alice = store.get_account("alice")
    assert alice is not None
    assert alice.password_hash == "hash-a"
    bob = store.get_account("bob")
    assert bob is not None
    assert (bob.password_hash, bob.is_admin, bob.enabled) == ("hash-b", False, True)
    assert store.add_accounts([]) == 0


def test_set_password_hash(store: Store) -> None:
    store.add_account("alice", "hash-a")
    store.set_password_hash("alice", "hash-b")
    account = store.get_account("alice")
    assert account is not None
    assert account.password_hash == "hash-b"
    with pytest.raises(NoSuchAccount, match="bob"):
        store.set_password_hash("bob", "hash")


def test_replace_password_hash_only_if_unchanged(store: Store) -> None:
    store.add_account("alice", "hash-a")
    assert store.replace_password_hash("alice", "hash-a", "hash-b")
    assert not store.replace_password_hash("alice", "hash-a", "hash-c")
    account = store.get_account("alice")
    assert account is not None
    assert account.password_hash == "hash-b"
    assert not store.replace_password_hash("bob", "hash-a", "hash-c")


def test_enable_and_disable(store: Store) -> None:
    store.add_account("alice", "hash-a")
    store.set_enabled("alice", False)
    account = store.get_account("alice")
    assert account is not None
    assert not account.enabled
    store.set_enabled("alice", True)
    account = store.get_account("alice")
    assert account is not None
    assert account.enabled
    with pytest.raises(NoSuchAccount):
        store.set_enabled("bob", False)


def test_remove(store: Store) -> None:
    store.add_account("alice", "hash-a")
    store.remove_account("alice")
    assert store.get_account("alice") is None
    assert store.count_accounts() == 0
    with pytest.raises(NoSuchAccount):
        store.remove_account("alice")
    # The name is free again.
    store.add_account("alice", "hash-b")
    assert store.count_accounts() == 1


def test_list_is_sorted_by_name(store: Store) -> None:
    for name in ["carol", "alice", "bob.x", "bob", "0zed", "bob-y", "bob_z"]:
        store.add_account(name, f"hash-{name}", is_admin=name == "carol")
    accounts = store.list_accounts()
    # Byte order, whatever the database's locale: '-' < '.' < '0' < '_'.
    names = ["0zed", "alice", "bob", "bob-y", "bob.x", "bob_z", "carol"]
    assert [a.name for a in accounts] == names
    assert [a.is_admin for a in accounts] == [n == "carol" for n in names]
    assert store.count_accounts() == 7


def test_record_login(database: Database) -> None:
    clock = FakeWallClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    with open_at(database, clock=clock) as store:
        store.add_account("alice", "hash-a")
        clock.now += timedelta(hours=1, milliseconds=7)
        store.record_login("alice")
        account = store.get_account("alice")
        assert account is not None
        assert account.created_at == "2024-05-01T12:00:00.000Z"
        assert account.last_login == "2024-05-01T13:00:00.007Z"
        with pytest.raises(NoSuchAccount):
            store.record_login("bob")


def test_repr_hides_the_hash(store: Store) -> None:
    account = store.add_account("alice", "$argon2id$secret-hash-material")
    assert "secret-hash-material" not in repr(account)
    assert "alice" in repr(account)


def test_names_are_parameters_not_sql(store: Store) -> None:
    store.add_account("alice", "hash-a")
    assert store.get_account("alice' OR '1'='1") is None
    with pytest.raises(NoSuchAccount):
        store.remove_account("x' OR 1=1 --")
    assert store.count_accounts() == 1


def test_iso_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert iso_utc(datetime(2024, 1, 2, 5, 6, 7, 999999, tzinfo=plus_two)) == (
        "2024-01-02T03:06:07.999Z"
    )
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2024, 1, 2))


# -- stamps: which account record a session belongs to ------------------------------------


def stamp_of(store: Store, name: str) -> int:
    account = store.get_account(name)
    assert account is not None
    return account.stamp


def test_every_record_has_a_stamp_of_its_own(store: Store) -> None:
    seen = [store.add_account("alice", "hash").stamp, store.add_account("bob", "hash").stamp]
    assert seen == [stamp_of(store, "alice"), stamp_of(store, "bob")]
    store.add_accounts([("carol", "hash")])
    seen.append(stamp_of(store, "carol"))
    # Each security-relevant change makes a new record: a stamp never seen before.
    store.set_password_hash("alice", "hash-2")
    seen.append(stamp_of(store, "alice"))
    store.set_enabled("alice", False)
    seen.append(stamp_of(store, "alice"))
    store.set_enabled("alice", True)
    seen.append(stamp_of(store, "alice"))
    store.remove_account("bob")
    seen.append(store.add_account("bob", "hash").stamp)  # the same name, another account
    assert len(set(seen)) == len(seen)
    assert all(stamp > 0 for stamp in seen)


def test_stamps_survive_what_is_not_a_new_record(store: Store) -> None:
    stamp = store.add_account("alice", "hash-a").stamp
    store.record_login("alice")
    assert store.replace_password_hash("alice", "hash-a", "hash-a-rehashed")  # a login's upgrade
    assert store.add_token("alice", b"d" * 32, later(7), NOW, stamp)
    assert stamp_of(store, "alice") == stamp


def test_stamps_are_never_reused_after_reopening(database: Database) -> None:
    with open_at(database) as store:
        first = {store.add_account(f"u{i}", "hash").stamp for i in range(3)}
        for i in range(3):
            store.remove_account(f"u{i}")
    with open_at(database) as store:
        assert store.add_account("u0", "hash").stamp > max(first)


def test_change_password_needs_the_current_record(store: Store) -> None:
    stamp = store.add_account("alice", "old").stamp
    assert store.add_token("alice", b"t" * 32, later(7), NOW, stamp)
    assert store.change_password("alice", stamp + 1000, "old", "new") is None  # stale session
    assert store.change_password("alice", stamp, "wrong", "new") is None  # changed meanwhile
    assert store.change_password("nobody", stamp, "old", "new") is None
    unchanged = store.get_account("alice")
    assert unchanged is not None
    assert (unchanged.password_hash, unchanged.stamp) == ("old", stamp)
    assert store.token_account(b"t" * 32) is not None  # a refused change revokes nothing
    renewed = store.change_password("alice", stamp, "old", "new")
    assert renewed is not None
    assert renewed != stamp
    changed = store.get_account("alice")
    assert changed is not None
    assert (changed.password_hash, changed.stamp) == ("new", renewed)
    assert store.token_account(b"t" * 32) is None
    assert store.change_password("alice", stamp, "new", "newer") is None  # the old record


# -- change detection ---------------------------------------------------------------------


def test_accounts_version_counts_what_live_sessions_must_see(store: Store) -> None:
    def bumped_by(change: Callable[[], object]) -> int:
        before = store.accounts_version()
        change()
        return store.accounts_version() - before

    stamp = store.add_account("alice", "hash-a").stamp
    assert bumped_by(lambda: store.add_account("bob", "hash-b")) == 0
    assert bumped_by(lambda: store.add_accounts([("carol", "hash-c")])) == 0
    assert bumped_by(lambda: store.record_login("alice")) == 0
    assert bumped_by(lambda: store.add_token("alice", b"x" * 32, later(1), NOW, stamp)) == 0
    assert bumped_by(lambda: store.set_enabled("bob", False)) == 1
    assert bumped_by(lambda: store.set_enabled("bob", True)) == 1
    assert bumped_by(lambda: store.set_password_hash("bob", "hash-b2")) == 1
    assert bumped_by(lambda: store.replace_password_hash("bob", "hash-b2", "hash-b3")) == 1
    renew = lambda: store.change_password("alice", stamp, "hash-a", "hash-a2")  # noqa: E731
    assert bumped_by(renew) == 1
    assert bumped_by(lambda: store.remove_account("carol")) == 1


# -- resume tokens ------------------------------------------------------------------------


def test_tokens_belong_to_one_record(store: Store) -> None:
    stamp = store.add_account("alice", "hash").stamp
    assert store.add_token("alice", b"a" * 32, later(7), NOW, stamp)
    assert store.token_account(b"a" * 32) == ("alice", later(7))
    assert store.add_token("alice", b"b" * 32, later(7), NOW)  # no stamp: any record
    assert not store.add_token("alice", b"c" * 32, later(7), NOW, stamp + 1000)
    assert not store.add_token("bob", b"d" * 32, later(7), NOW)
    assert store.token_account(b"c" * 32) is None
    assert store.token_account(b"d" * 32) is None
    assert store.token_account(b"nothing") is None


@pytest.mark.parametrize(
    "revoke",
    [
        lambda store: store.set_password_hash("alice", "new"),
        lambda store: store.set_enabled("alice", False),
        lambda store: store.remove_account("alice"),
    ],
    ids=["password", "disable", "remove"],
)
def test_tokens_are_revoked_with_the_record(store: Store, revoke: Callable[[Store], None]) -> None:
    store.add_account("alice", "hash")
    store.add_account("bob", "hash")
    for digest in (b"1" * 32, b"2" * 32):
        assert store.add_token("alice", digest, later(7), NOW)
    assert store.add_token("bob", b"3" * 32, later(7), NOW)
    revoke(store)
    assert store.token_account(b"1" * 32) is None
    assert store.token_account(b"2" * 32) is None
    assert store.token_account(b"3" * 32) == ("bob", later(7))


def test_a_token_logs_in_its_own_live_enabled_account_once_asked(database: Database) -> None:
    clock = FakeWallClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))
    with open_at(database, clock=clock) as store:
        store.add_account("alice", "hash-a")
        store.add_account("bob", "hash-b")
        assert store.add_token("alice", b"a" * 32, later(7), NOW)
        assert store.add_token("bob", b"b" * 32, later(7), NOW)
        # Another's token, an unknown one, one expired as of now: no login, none recorded.
        assert store.token_login(b"a" * 32, "bob", NOW) is None
        assert store.token_login(b"x" * 32, "alice", NOW) is None
        assert store.token_login(b"a" * 32, "alice", later(7)) is None
        assert store.get_account("alice").last_login is None  # type: ignore[union-attr]
        clock.now += timedelta(minutes=5)
        account = store.token_login(b"a" * 32, "alice", NOW)
        assert account is not None
        assert (account.name, account.password_hash, account.enabled) == ("alice", "hash-a", True)
        assert account.stamp == store.get_account("alice").stamp  # type: ignore[union-attr]
        assert store.get_account("alice").last_login == "2026-01-01T09:05:00.000Z"  # type: ignore[union-attr]
        store.set_admin("bob", True)
        assert store.token_login(b"b" * 32, "bob", NOW).is_admin  # type: ignore[union-attr]
        # A disabled account logs in by no token (disabling revokes them too, but a token
        # issued in a race must not do it either).
        store.set_admin("alice", True)  # not the last admin: bob may be disabled
        store.set_enabled("bob", False)
        assert store.token_login(b"b" * 32, "bob", NOW) is None
        assert store.add_token("bob", b"c" * 32, later(7), NOW)  # issued in a race
        assert store.token_login(b"c" * 32, "bob", NOW) is None


def test_enabling_keeps_tokens(store: Store) -> None:
    store.add_account("alice", "hash")
    assert store.add_token("alice", b"1" * 32, later(7), NOW)
    store.set_enabled("alice", True)
    assert store.token_account(b"1" * 32) is not None


def test_expired_and_surplus_tokens_are_dropped(store: Store) -> None:
    store.add_account("alice", "hash")
    assert store.add_token("alice", b"old" * 10, later(1), NOW)
    # A token added at day 2 drops the one that expired at day 1.
    assert store.add_token("alice", b"new" * 10, later(30), later(2))
    assert store.token_account(b"old" * 10) is None
    for i in range(25):
        assert store.add_token("alice", bytes([i]) * 32, later(10 + i), later(2))
    kept = [i for i in range(25) if store.token_account(bytes([i]) * 32) is not None]
    # At most 20 per account: the ones expiring last stay (the day-30 one among them).
    assert kept == list(range(6, 25))
    assert store.token_account(b"new" * 10) is not None


# -- message ids --------------------------------------------------------------------------


def test_ids_are_reserved_in_blocks_and_never_reused(database: Database) -> None:
    with open_at(database) as store:
        first = store.reserve_ids(10)
        assert first == range(1, 11)
        assert store.reserve_ids(5) == range(11, 16)
    with open_at(database) as store:  # a "crash" after using only part of the blocks
        assert store.reserve_ids(10) == range(16, 26)


def test_concurrent_reservations_never_overlap(database: Database) -> None:
    blocks: list[range] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4, timeout=30)

    def work() -> None:
        try:
            with open_at(database) as own:  # as several processes (or nodes) would
                start.wait()
                for _ in range(20):
                    blocks.append(own.reserve_ids(7))
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    open_at(database).close()  # create the schema before the race
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = sorted(i for block in blocks for i in block)
    assert ids == list(range(1, 4 * 20 * 7 + 1))
    assert all(len(block) == 7 for block in blocks)


# -- messages -----------------------------------------------------------------------------


def test_room_history_newest_last_and_trimmed(store: Store) -> None:
    store.add_messages([message(i, room="#a" if i % 2 else "#b") for i in range(1, 21)])
    assert [m.id for m in store.room_history("#a", 3)] == [15, 17, 19]
    assert store.room_history("#a", 3)[0] == message(15, room="#a")
    assert store.room_history("#nowhere", 5) == []
    # The next batch trims every room it touches to the newest 4; others are left alone.
    store.add_messages([message(21, room="#a")], keep_per_room=4)
    assert [m.id for m in store.room_history("#a", 100)] == [15, 17, 19, 21]
    assert len(store.room_history("#b", 100)) == 10


def test_a_batch_written_twice_is_stored_once(store: Store) -> None:
    batch = [message(1, room="#a"), message(2, to="bob")]
    store.add_messages(batch)
    store.add_messages(batch)
    store.add_messages([message(3, room="#a"), *batch])  # stored in part
    assert [m.id for m in store.room_history("#a", 10)] == [1, 3]
    assert [m.id for m in store.conversation("alice", "bob", 10)] == [2]
    store.add_messages([])  # an empty batch is no error
    store.mark_delivered([])


def test_private_messages_wait_until_delivered(store: Store) -> None:
    store.add_messages(
        [message(1, to="bob"), message(2, to="bob", sender="carol"), message(3, to="carol")],
        delivered=False,
    )
    store.add_messages([message(4, to="bob")])  # written to bob's session at once
    assert [m.id for m in store.pending("bob", 10)] == [1, 2]
    assert [m.id for m in store.pending("bob", 1)] == [1]
    assert store.pending("bob", 10)[0] == message(1, to="bob")
    assert store.pending_count("bob") == 2
    assert store.pending_count_from("alice", "bob") == 1
    assert store.pending_count_from("carol", "bob") == 1
    assert store.pending_count_from("bob", "carol") == 0
    store.mark_delivered([1, 3])
    assert [m.id for m in store.pending("bob", 10)] == [2]
    assert store.pending_count("carol") == 0


def test_conversation_both_ways_newest_last(store: Store) -> None:
    store.add_messages(
        [
            message(1, to="bob"),
            message(2, to="alice", sender="bob"),
            message(3, to="carol"),
            message(4, to="bob"),
            message(5, room="#a", sender="bob"),
        ]
    )
    assert [m.id for m in store.conversation("alice", "bob", 10)] == [1, 2, 4]
    assert [m.id for m in store.conversation("bob", "alice", 2)] == [2, 4]
    assert store.conversation("bob", "carol", 10) == []


def test_retention_never_drops_undelivered_messages(store: Store) -> None:
    store.add_messages([message(i, to="bob") for i in range(1, 4)], delivered=False)
    store.add_messages([message(i, to="bob") for i in range(4, 8)], keep_per_recipient=2)
    # Of the delivered ones, the newest 2 stay; all undelivered ones stay.
    assert [m.id for m in store.conversation("alice", "bob", 100)] == [1, 2, 3, 6, 7]
    store.add_messages([message(8, to="bob")], delivered=False, keep_per_recipient=2)
    assert [m.id for m in store.pending("bob", 10)] == [1, 2, 3, 8]


def test_removing_an_account_removes_its_messages(store: Store) -> None:
    for name in ("alice", "bob", "carol"):
        store.add_account(name, "hash")
    store.add_messages(
        [
            message(1, room="#a", sender="alice"),
            message(2, room="#a", sender="bob"),
            message(3, to="bob", sender="alice"),
            message(4, to="alice", sender="carol"),
            message(5, to="carol", sender="bob"),
        ],
        delivered=False,
    )
    store.remove_account("alice")
    assert [m.id for m in store.room_history("#a", 10)] == [2]
    assert store.pending("bob", 10) == []
    assert store.conversation("alice", "carol", 10) == []
    assert [m.id for m in store.pending("carol", 10)] == [5]


# -- leases on stored private messages ----------------------------------------------------


def waiting(store: Store, ids: range, to: str = "bob") -> None:
    """Private messages ``ids`` to ``to``, stored for later (nobody of ``to`` was online)."""
    store.add_messages([message(i, to=to) for i in ids], delivered=False)


def claimed(store: Store, claimer: str, limit: int = 100, lease_s: float = 60.0) -> list[int]:
    return [m.id for m in store.claim_pending("bob", limit, claimer, lease_s)]


def test_two_claimers_never_get_the_same_message(store: Store) -> None:
    waiting(store, range(1, 6))
    waiting(store, range(6, 8), to="carol")
    store.add_messages([message(8, to="bob"), message(9, room="#a", sender="bob")])
    first = store.claim_pending("bob", 3, "node1/s1", 60)
    assert first == [message(1, to="bob"), message(2, to="bob"), message(3, to="bob")]
    assert claimed(store, "node2/s7") == [4, 5]  # the rest, never what node1/s1 holds
    assert claimed(store, "node3/s2") == []
    assert claimed(store, "node1/s1") == []  # a live lease holds against its holder too
    assert [m.id for m in store.claim_pending("carol", 10, "node3/s2", 60)] == [6, 7]
    assert store.claim_pending("bob", 0, "node3/s2", 60) == []
    # Leases change nothing else: the messages still wait, and still count.
    assert [m.id for m in store.pending("bob", 10)] == [1, 2, 3, 4, 5]
    assert store.pending_count("bob") == 5


def test_an_expired_lease_can_be_claimed_again(store: Store) -> None:
    waiting(store, range(1, 3))
    assert claimed(store, "died", lease_s=1.0) == [1, 2]
    assert claimed(store, "next") == []
    taken: list[int] = []

    def claim() -> bool:
        taken.extend(claimed(store, "next"))
        return bool(taken)

    wait_until(claim, timeout=10, what="the lease of a claimer that died to run out")
    assert taken == [1, 2]
    # The first claimer comes back: its release no longer touches what is next's now.
    store.release_pending([1, 2], "died")
    assert claimed(store, "third") == []


def test_release_makes_messages_claimable_at_once(store: Store) -> None:
    waiting(store, range(1, 5))
    assert claimed(store, "a", limit=3) == [1, 2, 3]
    store.release_pending([3, 1], "a")  # its session died before writing them
    assert claimed(store, "b") == [1, 3, 4]
    store.release_pending([2, 3], "b")  # 2 is a's: b cannot release it
    store.release_pending([], "b")
    assert claimed(store, "c") == [3]
    assert claimed(store, "d") == []  # 2 is still a's, 1 and 4 are b's, 3 is c's


def test_delivered_messages_are_never_claimable(store: Store) -> None:
    waiting(store, range(1, 5))
    assert claimed(store, "a") == [1, 2, 3, 4]
    store.mark_delivered([1, 2])  # written to a's session
    store.release_pending([1, 2, 3], "a")  # a's session ends; 4 is still its
    assert claimed(store, "b") == [3]
    store.mark_delivered([3, 4])  # delivery also ends whatever lease was held
    store.release_pending([3], "b")
    assert claimed(store, "c") == []
    assert store.pending("bob", 10) == []


# -- concurrency --------------------------------------------------------------------------


def test_one_store_from_many_threads(store: Store) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=30)

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(25):
                name = f"u{worker}-{i}"
                store.add_account(name, f"hash-{name}")
                store.record_login(name)
                assert store.get_account(name) is not None
                store.list_accounts()
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count_accounts() == 200


def test_two_stores_on_one_database_from_threads(database: Database) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)
    open_at(database).close()  # create the schema before the race

    def work(prefix: str) -> None:
        try:
            with open_at(database) as own:
                start.wait()
                for i in range(50):
                    own.add_account(f"{prefix}{i}", "hash")
                    own.set_enabled(f"{prefix}{i}", False)
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open_at(database) as store:
        accounts = store.list_accounts()
    assert len(accounts) == 100
    assert not any(a.enabled for a in accounts)


def test_concurrent_claimers_take_each_message_exactly_once(database: Database) -> None:
    """Two deliverers (two nodes, or two processes on one file), each with its own store,
    claim the same recipient's 200 waiting messages in small batches, racing."""
    total = 200
    with open_at(database) as store:
        store.add_messages([message(i, to="bob") for i in range(1, total + 1)], delivered=False)
    taken: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def work(claimer: str) -> None:
        try:
            with open_at(database) as own:
                start.wait()
                deadline = time.monotonic() + 60
                # An empty answer may only mean the other claimer holds the rest locked.
                while sum(map(len, taken.values())) < total and time.monotonic() < deadline:
                    batch = own.claim_pending("bob", 3, claimer, 60)
                    assert [m.id for m in batch] == sorted(m.id for m in batch)
                    assert all(m.recipient == "bob" for m in batch)
                    taken[claimer].extend(m.id for m in batch)
        except BaseException as exc:  # handed to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(taken["a"] + taken["b"]) == list(range(1, total + 1))
    with open_at(database) as store:
        assert store.claim_pending("bob", total, "late", 60) == []


def test_a_token_never_outlives_a_concurrent_password_change(database: Database) -> None:
    """Minting for a record and ending that record race, round after round. Whatever the
    interleaving, once both are done no token minted for the ended record is left: it was
    revoked, or never stored."""
    with open_at(database) as store:
        store.add_account("alice", "hash-0")
    rounds, per_round = 40, 4
    stamps: list[int] = []  # the record each round mints for (and ends)
    minted: list[list[bytes]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []
    go, done = threading.Barrier(3, timeout=30), threading.Barrier(3, timeout=30)

    def mint() -> None:
        with open_at(database) as own:
            for r in range(rounds):
                go.wait()
                try:
                    for i in range(per_round):
                        digest = (r * per_round + i).to_bytes(32, "big")
                        if own.add_token("alice", digest, later(7), NOW, stamps[r]):
                            minted[r].append(digest)
                except BaseException as exc:  # handed to the main thread below
                    errors.append(exc)
                done.wait()

    def change() -> None:
        with open_at(database) as own:
            for r in range(rounds):
                go.wait()
                try:
                    own.set_password_hash("alice", f"hash-{r + 1}")
                except BaseException as exc:  # handed to the main thread below
                    errors.append(exc)
                done.wait()

    threads = [threading.Thread(target=mint), threading.Thread(target=change)]
    for thread in threads:
        thread.start()
    with open_at(database) as store:
        for r in range(rounds):
            stamps.append(stamp_of(store, "alice"))
            before = (rounds * per_round + r).to_bytes(32, "big")
            assert store.add_token("alice", before, later(7), NOW, stamps[r])
            minted[r].append(before)  # one that surely exists before the race
            go.wait()
            done.wait()
            left = [d for d in minted[r] if store.token_account(d) is not None]
            assert left == [], f"round {r}: tokens of an ended record survive"
    for thread in threads:
        thread.join()
    assert errors == []


# -- SQLite only: the file, its pragmas, its migrations -----------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "sealroom.db"


def raw_query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Look at the file with a connection of our own, not through the SqliteStore."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def set_user_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {version:d}")
        conn.commit()


def test_new_file_is_created_with_parent_dirs_and_migrated(db_path: Path) -> None:
    assert not db_path.parent.exists()
    with SqliteStore(db_path) as store:
        assert store.count_accounts() == 0
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert raw_query(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = raw_query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert ("accounts",) in tables


def test_empty_existing_file_is_migrated(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.touch()
    with SqliteStore(db_path) as store:
        assert store.list_accounts() == []
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_connection_settings(db_path: Path) -> None:
    with SqliteStore(db_path) as store, store._connection() as conn:
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_reopen_does_not_migrate_again(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a", is_admin=True)
    with SqliteStore(db_path) as store:
        assert store.get_account("alice") is not None
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_later_migration_step_is_applied_on_open(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a")
    step = ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",)
    monkeypatch.setattr(schema_module, "MIGRATIONS", (*MIGRATIONS, step))
    with SqliteStore(db_path) as store:
        assert store.get_account("alice") is not None
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]
    assert raw_query(db_path, "SELECT count(*) FROM notes") == [(0,)]


def test_failing_migration_leaves_the_file_untouched(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a")
    good = ("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)
    bad = ("THIS IS NOT SQL",)
    monkeypatch.setattr(schema_module, "MIGRATIONS", (*MIGRATIONS, good, bad))
    with pytest.raises(StoreError, match="cannot open database"):
        SqliteStore(db_path)
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    tables = raw_query(db_path, "SELECT name FROM sqlite_master WHERE name = 'notes'")
    assert tables == []


def test_a_database_from_before_leases_keeps_its_waiting_messages(db_path: Path) -> None:
    """Schema 5, the last without leases, migrates on open: what waited still waits, and
    is claimable."""
    db_path.parent.mkdir()
    with closing(sqlite3.connect(db_path)) as conn:
        for step in MIGRATIONS[:5]:
            for statement in step:
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO messages (id, recipient, sender, body, created_at, delivered)"
            " VALUES (?, 'bob', 'alice', ?, ?, ?)",
            [(1, "read", NOW, 1), (2, "waiting", NOW, 0), (3, "waiting too", NOW, 0)],
        )
        conn.execute("UPDATE meta SET value = 3 WHERE key = 'id_high_water'")
        conn.execute("PRAGMA user_version = 5")
        conn.commit()
    with SqliteStore(db_path) as store:
        assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert [m.body for m in store.pending("bob", 10)] == ["waiting", "waiting too"]
        assert [m.id for m in store.claim_pending("bob", 10, "node1/s1", 60)] == [2, 3]
        assert store.claim_pending("bob", 10, "node2/s1", 60) == []
        assert store.check() == []


def test_newer_schema_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    set_user_version(db_path, len(MIGRATIONS) + 1)
    with pytest.raises(SchemaTooNew, match="newer Sealroom") as caught:
        SqliteStore(db_path)
    assert str(db_path) in str(caught.value)
    # Refusing must not have changed the file.
    assert raw_query(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all\n" * 100, b"garbage", b"SQLite format 3\x00" + b"\xff" * 200],
)
def test_non_database_file_is_refused(db_path: Path, content: bytes) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(content)
    with pytest.raises(StoreError) as caught:
        SqliteStore(db_path)
    message = str(caught.value)
    assert str(db_path) in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert db_path.read_bytes() == content


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open database"):
        SqliteStore(tmp_path)


def test_many_processes_opening_a_new_file_at_once(tmp_path: Path) -> None:
    # Each thread stands in for a process (server, CLI) creating the same new database.
    errors: list[BaseException] = []
    for attempt in range(20):
        path = tmp_path / f"new-{attempt}.db"
        start = threading.Barrier(4, timeout=30)

        def open_and_close(path: Path = path, start: threading.Barrier = start) -> None:
            try:
                start.wait()
                SqliteStore(path).close()
            except BaseException as exc:  # handed to the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert raw_query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert errors == []


# -- opening only what exists; files born private ---------------------------------------------


def test_create_false_never_creates_a_database(tmp_path: Path) -> None:
    """Issue 13, report 1: a command must not leave a new, empty database behind."""
    missing = tmp_path / "var" / "none.db"
    with pytest.raises(store_module.MissingDatabase) as raised:
        SqliteStore(missing, create=False)
    assert str(missing) in str(raised.value)
    assert not missing.exists()
    assert not missing.parent.exists()


def test_create_false_opens_an_existing_database(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        store.add_account("alice", "hash-a")
    with SqliteStore(db_path, create=False) as store:
        assert [a.name for a in store.list_accounts()] == ["alice"]


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_database_and_side_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Issue 13, report 3: argon2 hashes and private messages, mode 0600 (and -wal, -shm)."""
    db_path = tmp_path / "sealroom.db"
    backup = tmp_path / "backup.db"
    previous = os.umask(umask)
    try:
        with SqliteStore(db_path) as store:
            store.add_account("alice", "hash-a")
            modes = {
                path.name: stat.S_IMODE(path.stat().st_mode)
                for path in tmp_path.iterdir()
                if path.name.startswith("sealroom.db")
            }
            store.backup(backup)
    finally:
        os.umask(previous)
    assert modes == {"sealroom.db": 0o600, "sealroom.db-wal": 0o600, "sealroom.db-shm": 0o600}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    # A backup is one self-contained file: no -wal or -shm needed beside it.
    assert raw_query(backup, "PRAGMA journal_mode") == [("delete",)]


def test_backup_never_follows_a_planted_file(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    target = tmp_path / "planted.db"
    target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="exists"):
        sqlite_store.backup(target)
    assert not (tmp_path / "elsewhere").exists()


def test_check_file_reads_a_backup_without_touching_it(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    sqlite_store.add_account("alice", "hash-a")
    backup = tmp_path / "backup.db"
    sqlite_store.backup(backup)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert store_module.check_file(backup) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"", "not a Sealroom database"),
        (b"not a database at all, just text" * 40, "not an SQLite"),
    ],
)
def test_check_file_reports_what_is_wrong(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "backup.db"
    if content is not None:
        path.write_bytes(content)
    problems = store_module.check_file(path)
    assert len(problems) == 1
    assert problem in problems[0]
    assert str(path) in problems[0]


def test_check_file_finds_damage(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    for index in range(200):
        sqlite_store.add_account(f"user{index}", "x" * 200)
    backup = tmp_path / "backup.db"
    sqlite_store.backup(backup)
    data = bytearray(backup.read_bytes())
    page = 4096
    data[2 * page + 100 : 2 * page + 400] = b"\xff" * 300  # scribble over a b-tree page
    backup.write_bytes(bytes(data))
    assert store_module.check_file(backup) != []


# -- roles and the last admin --------------------------------------------------------------------


def test_set_admin_changes_the_role_and_counts_as_an_account_change(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a", is_admin=True)
    store.add_account("bob", "hash-b")
    version = store.accounts_version()
    store.set_admin("bob", True)
    account = store.get_account("bob")
    assert account is not None
    assert account.is_admin
    assert store.accounts_version() > version
    with pytest.raises(NoSuchAccount):
        store.set_admin("carol", True)


@pytest.mark.parametrize(
    "change",
    [
        lambda store: store.set_admin("alice", False),
        lambda store: store.set_enabled("alice", False),
        lambda store: store.remove_account("alice"),
    ],
    ids=["demote", "disable", "remove"],
)
def test_the_last_enabled_admin_stays(store: SqliteStore, change: Any) -> None:
    store.add_account("alice", "hash-a", is_admin=True)
    store.add_account("bob", "hash-b")
    with pytest.raises(store_module.LastAdmin, match="alice"):
        change(store)
    account = store.get_account("alice")
    assert account is not None
    assert (account.is_admin, account.enabled) == (True, True)
    # With a second enabled admin it is allowed.
    store.add_account("carol", "hash-c", is_admin=True)
    change(store)


def test_a_disabled_admin_does_not_count(store: SqliteStore) -> None:
    store.add_account("alice", "hash-a", is_admin=True)
    store.add_account("carol", "hash-c", is_admin=True)
    store.set_enabled("carol", False)
    with pytest.raises(store_module.LastAdmin):
        store.remove_account("alice")
    # Plain users come and go freely, admins or not elsewhere.
    store.add_account("bob", "hash-b")
    store.remove_account("bob")


# -- rooms ------------------------------------------------------------------------------------


def test_rooms_are_stored_with_their_roles(store: Store) -> None:
    store.add_account("olga", "hash-o")
    before = store.rooms_version()
    assert store.create_room("#tea", "olga")
    assert not store.create_room("#tea", "someone")  # the name is taken: first one wins
    room = store.get_room("#tea")
    assert room is not None
    assert (room.owner, room.mode, room.topic, room.operators) == ("olga", "open", "", {"olga"})
    store.set_role("#tea", "bob", "invited", True)
    store.set_role("#tea", "bob", "operator", True)
    store.set_room("#tea", topic="green", mode="private")
    changed = store.get_room("#tea")
    assert changed is not None
    assert changed.version > room.version
    assert (changed.topic, changed.mode) == ("green", "private")
    store.set_role("#tea", "bob", "banned", True)  # a ban withdraws invitation and role
    banned = store.get_room("#tea")
    assert banned is not None
    assert (banned.banned, banned.invited, banned.operators) == ({"bob"}, set(), {"olga"})
    assert store.rooms_version() > before


def test_a_destroyed_room_takes_its_history(store: Store) -> None:
    store.create_room("#tea", None)
    store.add_messages([message(1, room="#tea"), message(2, room="#other")])
    assert store.destroy_room("#tea")
    assert not store.destroy_room("#tea")
    assert store.get_room("#tea") is None
    assert store.room_history("#tea", 10) == []
    assert [m.id for m in store.room_history("#other", 10)] == [2]


def test_a_removed_owner_leaves_no_heir(store: Store) -> None:
    store.add_account("olga", "hash-o")
    store.add_account("root", "hash-r", is_admin=True)
    store.create_room("#tea", "olga")
    store.remove_account("olga")
    store.add_account("olga", "hash-o2")  # a namesake inherits nothing
    room = store.get_room("#tea")
    assert room is not None
    assert (room.owner, room.operators) == (None, frozenset())


def test_highest_id_covers_ids_reserved_and_ids_stored(store: Store) -> None:
    # A cluster's id counter is raised to this when it (re)joins Redis: it must cover ids a
    # cluster stored without reserving them, and blocks a single node reserved unused.
    assert store.highest_id() == 0
    block = store.reserve_ids(10)
    assert store.highest_id() == block[-1]
    store.add_messages([message(500, room="#lobby")])
    assert store.highest_id() == 500
