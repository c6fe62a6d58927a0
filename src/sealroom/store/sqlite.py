"""Persistent state in one SQLite file; the only module that speaks SQL.

The server and the command line open the same file at the same time, so the database runs
in WAL mode (readers never block the writer) with a busy timeout, and every write is an
explicit ``BEGIN IMMEDIATE`` transaction: a writer takes the write lock up front instead of
failing half way through when it tries to upgrade a read lock.

One connection serves every thread of a process, behind one lock (the history writer has
its own); SQLite serialises writers per file anyway. Triggers count account changes in
``meta.accounts_version``, which is how the server notices what the CLI changed without a
restart.

The schema grows by appending steps to ``MIGRATIONS``; ``PRAGMA user_version`` records how
many have run. Steps already released are never edited, so every database reaches the same
schema by the same path.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

from sealroom.core.blocking import check_may_block
from sealroom.core.model import (
    Account,
    AccountExists,
    NoSuchAccount,
    SchemaTooNew,
    StoredMessage,
    StoreError,
    iso_utc,
    utc_now,
)
from sealroom.core.text import user_name

Clock = Callable[[], datetime]

BUSY_TIMEOUT_MS: Final = 5000

# Each step is the list of statements that takes the schema from version N to N + 1
# (the step at index 0 makes version 1). Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE accounts (
            name          TEXT PRIMARY KEY NOT NULL,
            password_hash TEXT NOT NULL,
            is_admin      INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
            enabled       INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
            created_at    TEXT NOT NULL,
            last_login    TEXT
        )
        """,
    ),
    (
        # Version 2: messages, delivery state, durable message ids, account-change counter.
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY NOT NULL,
            value INTEGER NOT NULL
        )
        """,
        "INSERT INTO meta (key, value) VALUES ('id_high_water', 0), ('accounts_version', 0)",
        # id is the wire ID. room is set for room messages; recipient for private ones,
        # which stay delivered = 0 until written to one of the recipient's sessions.
        """
        CREATE TABLE messages (
            id         INTEGER PRIMARY KEY,
            room       TEXT,
            recipient  TEXT,
            sender     TEXT NOT NULL,
            body       TEXT NOT NULL,
            created_at TEXT NOT NULL,
            delivered  INTEGER NOT NULL DEFAULT 1 CHECK (delivered IN (0, 1)),
            CHECK ((room IS NULL) != (recipient IS NULL))
        )
        """,
        "CREATE INDEX messages_by_room ON messages (room, id) WHERE room IS NOT NULL",
        """
        CREATE INDEX messages_by_recipient ON messages (recipient, sender, id)
            WHERE recipient IS NOT NULL
        """,
        "CREATE INDEX messages_pending ON messages (recipient, id) WHERE delivered = 0",
        # The server polls accounts_version to see CLI changes (disable, remove, passwd).
        """
        CREATE TRIGGER accounts_changed AFTER UPDATE OF enabled, password_hash ON accounts
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'accounts_version';
        END
        """,
        """
        CREATE TRIGGER accounts_removed AFTER DELETE ON accounts
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'accounts_version';
            DELETE FROM messages WHERE sender = OLD.name OR recipient = OLD.name;
        END
        """,
    ),
    (
        # Version 3: resume tokens, stored only as their SHA-256 digest.
        """
        CREATE TABLE resume_tokens (
            digest     BLOB PRIMARY KEY NOT NULL,
            account    TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
            expires_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX resume_tokens_by_account ON resume_tokens (account, expires_at)",
    ),
    (
        # Version 4: account stamps. A session is bound to the account record it logged in
        # as, not to a name: every record gets a stamp unique across the database's life,
        # renewed by every security-relevant change (password, enabled, role), so a removed
        # and re-created name, a disabled account or a new password all read as "another
        # account" to the sessions of the old one.
        "ALTER TABLE accounts ADD COLUMN stamp INTEGER NOT NULL DEFAULT 0",
        "INSERT INTO meta (key, value) VALUES ('account_stamp', 0)",
        "UPDATE accounts SET stamp = rowid",
        "UPDATE meta SET value = (SELECT coalesce(max(stamp), 0) FROM accounts)"
        " WHERE key = 'account_stamp'",
        """
        CREATE TRIGGER accounts_stamp_new AFTER INSERT ON accounts
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'account_stamp';
            UPDATE accounts SET stamp = (SELECT value FROM meta WHERE key = 'account_stamp')
                WHERE name = NEW.name;
        END
        """,
        """
        CREATE TRIGGER accounts_stamp_changed AFTER UPDATE OF enabled, is_admin ON accounts
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'account_stamp';
            UPDATE accounts SET stamp = (SELECT value FROM meta WHERE key = 'account_stamp')
                WHERE name = NEW.name;
        END
        """,
        # The server polls accounts_version: a role change must reach live sessions too.
        """
        CREATE TRIGGER accounts_role_changed AFTER UPDATE OF is_admin ON accounts
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'accounts_version';
        END
        """,
    ),
)

# A new password renews the stamp explicitly (a trigger on password_hash would also fire
# when a login upgrades the hash of the same password to new parameters, which must not end
# the account's other sessions).
_RENEW_STAMP: Final = (
    "UPDATE meta SET value = value + 1 WHERE key = 'account_stamp'",
    "UPDATE accounts SET stamp = (SELECT value FROM meta WHERE key = 'account_stamp')"
    " WHERE name = ?",
)

MAX_TOKENS_PER_ACCOUNT: Final = 20  # older tokens of the account are dropped beyond this

_INSERT_BATCH: Final = (
    "INSERT OR IGNORE INTO messages (id, room, recipient, sender, body, created_at, delivered)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'),"
    " json_extract(value, '$[5]'), ? FROM json_each(?)"
)
_PRUNE_ROOM: Final = (
    "DELETE FROM messages WHERE room = ? AND id < ("
    " SELECT coalesce(min(id), 0) FROM ("
    "  SELECT id FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?))"
)
_PRUNE_PRIVATE: Final = (
    "DELETE FROM messages WHERE recipient = ? AND delivered = 1 AND id < ("
    " SELECT coalesce(min(id), 0) FROM ("
    "  SELECT id FROM messages WHERE recipient = ? AND delivered = 1"
    "  ORDER BY id DESC LIMIT ?))"
)

_MESSAGE_COLUMNS: Final = "id, room, recipient, sender, body, created_at"

_ACCOUNT_COLUMNS: Final = "name, password_hash, is_admin, enabled, created_at, last_login, stamp"


def _account(row: tuple[str, str, int, int, str, str | None, int]) -> Account:
    name, password_hash, is_admin, enabled, created_at, last_login, stamp = row
    return Account(
        name=name,
        password_hash=password_hash,
        is_admin=bool(is_admin),
        enabled=bool(enabled),
        created_at=created_at,
        last_login=last_login,
        stamp=stamp,
    )


class SqliteStore:
    """The Sealroom database in one SQLite file; safe to call from any thread."""

    def __init__(self, path: Path, *, clock: Clock = utc_now) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for {path}: {exc.strerror}") from exc
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        check_may_block("SQLite")
        with self._lock:
            if self._conn is None:
                raise StoreError("the database is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"database error in {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                # SQLite may already have rolled back on its own (e.g. on SQLITE_FULL).
                if conn.in_transaction:
                    conn.rollback()
                raise
            conn.execute("COMMIT")

    # -- accounts -------------------------------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?",  # noqa: S608 -- constant column list
                (name,),
            ).fetchone()
        return None if row is None else _account(row)

    def add_account(self, name: str, password_hash: str, *, is_admin: bool = False) -> Account:
        if user_name(name) != name:
            # A caller bug, not a user error: names are validated and folded at the edge.
            raise ValueError("account names must be passed in canonical form")
        account = Account(
            name=name,
            password_hash=password_hash,
            is_admin=is_admin,
            enabled=True,
            created_at=iso_utc(self._clock()),
            last_login=None,
        )
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO accounts (name, password_hash, is_admin, enabled, created_at)"
                " VALUES (?, ?, ?, 1, ?) ON CONFLICT (name) DO NOTHING",
                (name, password_hash, int(is_admin), account.created_at),
            ).rowcount
            if inserted == 0:
                raise AccountExists(f"account {name} already exists")
            (stamp,) = conn.execute(
                "SELECT stamp FROM accounts WHERE name = ?", (name,)
            ).fetchone()
        return dataclasses.replace(account, stamp=int(stamp))

    def add_accounts(self, accounts: Sequence[tuple[str, str]]) -> int:
        """Create many (name, password hash) accounts in one transaction; existing names are
        left alone. Returns how many were created."""
        created_at = iso_utc(self._clock())
        with self._transaction() as conn:
            # The cursor's count, not total_changes: that one counts the triggers' rows too.
            return conn.executemany(
                "INSERT INTO accounts (name, password_hash, is_admin, enabled, created_at)"
                " VALUES (?, ?, 0, 1, ?) ON CONFLICT (name) DO NOTHING",
                [(name, password_hash, created_at) for name, password_hash in accounts],
            ).rowcount

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """A new password: a new stamp, and every resume token of the account is revoked."""
        sql = "UPDATE accounts SET password_hash = ? WHERE name = ?"
        self._update_one(name, sql, (password_hash, name), revoke_tokens=True, renew=True)

    def change_password(self, name: str, stamp: int, old_hash: str, new_hash: str) -> int | None:
        """``/passwd``: replace the hash only if the record is still the one with ``stamp``
        and ``old_hash`` (two concurrent changes: one wins, the other is told so); revoke
        the tokens. Returns the new stamp, or None if the record changed meanwhile."""
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE accounts SET password_hash = ?"
                " WHERE name = ? AND stamp = ? AND password_hash = ?",
                (new_hash, name, stamp, old_hash),
            ).rowcount
            if updated != 1:
                return None
            conn.execute("DELETE FROM resume_tokens WHERE account = ?", (name,))
            for statement in _RENEW_STAMP:
                conn.execute(statement, () if "?" not in statement else (name,))
            (renewed,) = conn.execute(
                "SELECT stamp FROM accounts WHERE name = ?", (name,)
            ).fetchone()
        return int(renewed)

    def replace_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Swap the hash only if it is still ``old_hash``; False if it changed meanwhile.

        A login that upgrades a hash to new parameters must not overwrite a password that
        was changed (from the CLI, say) between its verification and its write.
        """
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE accounts SET password_hash = ? WHERE name = ? AND password_hash = ?",
                (new_hash, name, old_hash),
            ).rowcount
        return updated == 1

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabling an account also revokes its resume tokens."""
        sql = "UPDATE accounts SET enabled = ? WHERE name = ?"
        self._update_one(name, sql, (int(enabled), name), revoke_tokens=not enabled)

    def remove_account(self, name: str) -> None:
        self._update_one(name, "DELETE FROM accounts WHERE name = ?", (name,))

    def record_login(self, name: str) -> None:
        sql = "UPDATE accounts SET last_login = ? WHERE name = ?"
        self._update_one(name, sql, (iso_utc(self._clock()), name))

    def list_accounts(self) -> list[Account]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name",  # noqa: S608 -- constant column list
            ).fetchall()
        return [_account(row) for row in rows]

    def count_accounts(self) -> int:
        with self._connection() as conn:
            (count,) = conn.execute("SELECT count(*) FROM accounts").fetchone()
        return int(count)

    def _update_one(
        self,
        name: str,
        sql: str,
        params: tuple[object, ...],
        *,
        revoke_tokens: bool = False,
        renew: bool = False,
    ) -> None:
        with self._transaction() as conn:
            if conn.execute(sql, params).rowcount == 0:
                raise NoSuchAccount(f"no account named {name}")
            if revoke_tokens:
                conn.execute("DELETE FROM resume_tokens WHERE account = ?", (name,))
            if renew:
                for statement in _RENEW_STAMP:
                    conn.execute(statement, () if "?" not in statement else (name,))

    # -- resume tokens ----------------------------------------------------------------------

    def add_token(
        self, name: str, digest: bytes, expires_at: str, now: str, stamp: int | None = None
    ) -> bool:
        """Store a token digest, dropping expired (at ``now``) and surplus tokens of the account.

        With ``stamp``, only for that very record: False (nothing stored) if the account was
        changed, removed or re-created since, so a session never mints for another account.
        """
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO resume_tokens (digest, account, expires_at)"
                " SELECT ?, name, ? FROM accounts WHERE name = ? AND (? IS NULL OR stamp = ?)",
                (digest, expires_at, name, stamp, stamp),
            ).rowcount
            if inserted != 1:
                return False
            conn.execute(
                "DELETE FROM resume_tokens WHERE account = ? AND (expires_at <= ? OR digest IN ("
                " SELECT digest FROM resume_tokens WHERE account = ?"
                " ORDER BY expires_at DESC, rowid DESC LIMIT -1 OFFSET ?))",
                (name, now, name, MAX_TOKENS_PER_ACCOUNT),
            )
        return True

    def token_account(self, digest: bytes) -> tuple[str, str] | None:
        """(account, expires_at) of the token with this digest, if it exists."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT account, expires_at FROM resume_tokens WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # -- change detection -----------------------------------------------------------------

    def accounts_version(self) -> int:
        """A counter that triggers bump on every disable, enable, password change and removal.

        The server polls it to apply CLI changes to live sessions. (``PRAGMA data_version``
        would also change with every batch the server's own history writer commits.)
        """
        with self._connection() as conn:
            (version,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'accounts_version'"
            ).fetchone()
        return int(version)

    # -- message ids ------------------------------------------------------------------------

    def reserve_ids(self, count: int) -> range:
        """Durably reserve ``count`` fresh message ids, above every id ever handed out.

        Ids are given out from memory and reserved in blocks: after a crash the unused rest
        of a block is skipped, never reused, so ids stay unique and increasing across restarts.
        """
        with self._transaction() as conn:
            (high,) = conn.execute("SELECT value FROM meta WHERE key = 'id_high_water'").fetchone()
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'id_high_water'", (int(high) + count,)
            )
        return range(int(high) + 1, int(high) + count + 1)

    # -- messages ---------------------------------------------------------------------------

    def add_messages(
        self,
        messages: Sequence[StoredMessage],
        *,
        delivered: bool = True,
        keep_per_room: int | None = None,
        keep_per_recipient: int | None = None,
    ) -> None:
        """Store messages in one transaction (the history writer's group commit), and in the
        same transaction trim the rooms and recipients they touch to their retention."""
        # One statement for the whole batch: executemany would release and re-take the GIL
        # around every row, and each release hands the GIL to another connection thread.
        rows = json.dumps(messages)  # each message is its row: [id, room, ..., created_at]
        with self._transaction() as conn:
            conn.execute(_INSERT_BATCH, (int(delivered), rows))
            if keep_per_room is not None:
                for room in {m.room for m in messages if m.room is not None}:
                    conn.execute(_PRUNE_ROOM, (room, room, keep_per_room))
            if keep_per_recipient is not None:
                for name in {m.recipient for m in messages if m.recipient is not None}:
                    conn.execute(_PRUNE_PRIVATE, (name, name, keep_per_recipient))

    def room_history(self, room: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages of ``room``, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ?"  # noqa: S608 -- constant columns
                " ORDER BY id DESC LIMIT ?",
                (room, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in reversed(rows)]

    def conversation(self, one: str, other: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` private messages between two accounts, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 -- constant columns
                " WHERE (recipient = ? AND sender = ?) OR (recipient = ? AND sender = ?)"
                " ORDER BY id DESC LIMIT ?",
                (one, other, other, one, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in reversed(rows)]

    def pending_count(self, recipient: str) -> int:
        with self._connection() as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM messages WHERE recipient = ? AND delivered = 0",
                (recipient,),
            ).fetchone()
        return int(count)

    def pending_count_from(self, sender: str, recipient: str) -> int:
        """Stored messages from ``sender`` still waiting for ``recipient``."""
        with self._connection() as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM messages"
                " WHERE recipient = ? AND sender = ? AND delivered = 0",
                (recipient, sender),
            ).fetchone()
        return int(count)

    def pending(self, recipient: str, limit: int) -> list[StoredMessage]:
        """Private messages waiting for ``recipient``, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 -- constant columns
                " WHERE recipient = ? AND delivered = 0 ORDER BY id LIMIT ?",
                (recipient, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in rows]

    def mark_delivered(self, ids: Sequence[int]) -> None:
        with self._transaction() as conn:
            conn.executemany("UPDATE messages SET delivered = 1 WHERE id = ?", [(i,) for i in ids])

    # -- maintenance ------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[SqliteSnapshot]:
        """The whole database as of one moment, to read out (``sealroom db copy``).

        One read transaction: a server writing meanwhile (WAL) changes nothing it shows.
        Other calls on this store wait until the snapshot is closed.
        """
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield SqliteSnapshot(conn)
            finally:
                conn.execute("COMMIT")

    def backup(self, destination: Path) -> None:
        """Copy the database with SQLite's online backup API: safe while the server runs."""
        if destination.exists():
            raise StoreError(f"{destination} exists; choose a new file for the backup")
        try:
            target = sqlite3.connect(destination)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create {destination}: {exc}") from exc
        try:
            with self._connection() as conn:
                conn.backup(target)
        finally:
            target.close()

    def check(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks; empty when sound."""
        with self._connection() as conn:
            problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            problems = [p for p in problems if p != "ok"]
            problems += [repr(row) for row in conn.execute("PRAGMA foreign_key_check")]
        return problems


class SnapshotTotals(NamedTuple):
    """What a snapshot holds, counted, and the counters it must carry over."""

    accounts: int
    messages: int
    pending: int  # private messages not yet delivered
    tokens: int
    id_high_water: int  # the last message id ever reserved
    top_id: int
    stamp_high_water: int  # the last account stamp ever given
    top_stamp: int
    accounts_version: int


class SqliteSnapshot:
    """Every row of the database, read inside one transaction (see :meth:`SqliteStore.snapshot`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def totals(self) -> SnapshotTotals:
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM messages),"
            " (SELECT count(*) FROM messages WHERE delivered = 0),"
            " (SELECT count(*) FROM resume_tokens),"
            " (SELECT value FROM meta WHERE key = 'id_high_water'),"
            " (SELECT coalesce(max(id), 0) FROM messages),"
            " (SELECT value FROM meta WHERE key = 'account_stamp'),"
            " (SELECT coalesce(max(stamp), 0) FROM accounts),"
            " (SELECT value FROM meta WHERE key = 'accounts_version')"
        ).fetchone()
        return SnapshotTotals(*(int(value) for value in row))

    def accounts(self) -> Iterator[Account]:
        cursor = self._conn.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name"  # noqa: S608 -- constant column list
        )
        for row in cursor:
            yield _account(row)

    def messages(self) -> Iterator[tuple[StoredMessage, bool]]:
        """Every message, oldest first, with whether it was delivered."""
        cursor = self._conn.execute(
            f"SELECT {_MESSAGE_COLUMNS}, delivered FROM messages ORDER BY id"  # noqa: S608 -- constant columns
        )
        for row in cursor:
            yield StoredMessage(*row[:6]), bool(row[6])

    def tokens(self) -> Iterator[tuple[bytes, str, str]]:
        """(digest, account, expires_at) of every resume token, in the order they were made."""
        cursor = self._conn.execute(
            "SELECT digest, account, expires_at FROM resume_tokens ORDER BY rowid"
        )
        for digest, account, expires_at in cursor:
            yield bytes(digest), str(account), str(expires_at)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Configure a fresh connection and bring the schema up to date."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # The first read of the file header: this is where a non-database file shows up.
        _check_version(_user_version(conn), path)
        _enable_wal(conn)
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StoreError(f"{path} is not a Sealroom database (not an SQLite file)") from exc
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (a setting stored in the file), waiting out other openers.

    The switch needs an exclusive lock. When another process is opening the same new file
    at the same moment, SQLite answers SQLITE_BUSY at once instead of calling the busy
    handler (waiting could deadlock inside SQLite), so we do the waiting here, bounded by
    the same timeout. WAL cannot be switched on inside a transaction, hence before migrating.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
        else:
            return


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def _check_version(found: int, path: Path) -> None:
    if found > len(MIGRATIONS):
        raise SchemaTooNew(
            f"{path} has schema version {found}, but this Sealroom knows only up to "
            f"{len(MIGRATIONS)}; it was written by a newer Sealroom, upgrade to use it"
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # All pending steps run in one transaction: a failure leaves the file as it was, and
    # two processes opening a new file at once cannot both run the same step.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _user_version(conn)
        _check_version(found, path)
        for version, statements in enumerate(MIGRATIONS[found:], start=found + 1):
            for statement in statements:
                conn.execute(statement)
            # PRAGMA takes no parameters; version is an int from this module, not input.
            conn.execute(f"PRAGMA user_version = {version:d}")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.execute("COMMIT")
