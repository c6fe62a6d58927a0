"""Persistent state in one SQLite file; the only module that speaks SQL.

The server and the command line open the same file at the same time, so the database runs
in WAL mode (readers never block the writer) with a busy timeout, and every write is an
explicit ``BEGIN IMMEDIATE`` transaction: a writer takes the write lock up front instead of
failing half way through when it tries to upgrade a read lock.

One connection serves every thread of a process, behind one lock (the history writer has
its own); SQLite serialises writers per file anyway. Triggers count account changes in
``meta.accounts_version``, which is how the server notices what the CLI changed without a
restart.

Only the server creates a database (``create=True``, the default); the command line opens
with ``create=False`` and gets :class:`MissingDatabase` instead of a new, empty file that the
server never reads. The file is created mode 0600 whatever the umask (it holds password
hashes and private messages); SQLite gives its ``-wal`` and ``-shm`` files the database's
mode. Backups are made the same way, as one self-contained file (rollback journal mode).

The schema and its migrations are in :mod:`sealroom.store.sqlite_schema`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
import urllib.parse
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
    LastAdmin,
    MissingDatabase,
    NoSuchAccount,
    RoomRecord,
    StoredMessage,
    StoreError,
    iso_utc,
    utc_now,
)
from sealroom.core.text import user_name
from sealroom.store.rows import ROOM_COLUMNS, room_records
from sealroom.store.sqlite_schema import MIGRATIONS, prepare, user_version

Clock = Callable[[], datetime]

PRIVATE_MODE: Final = 0o600  # the database, its side files and backups

__all__ = ["MIGRATIONS", "LastAdmin", "MissingDatabase", "SqliteStore", "check_file"]


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
_TOKEN_LOGIN_COLUMNS: Final = ", ".join(f"a.{column}" for column in _ACCOUNT_COLUMNS.split(", "))


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

    def __init__(self, path: Path, *, clock: Clock = utc_now, create: bool = True) -> None:
        """Open the database at ``path``, migrating it to the current schema.

        With ``create`` false a missing file is :class:`MissingDatabase`, never a new one.
        """
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory for {path}: {exc.strerror}") from exc
            _create_private(path)
        elif not path.exists():
            raise MissingDatabase(f"no database at {path.absolute()}")
        try:
            # mode=rw: SQLite itself never creates the file either (no race with a remove).
            conn = sqlite3.connect(
                _uri(path, "rwc" if create else "rw"),
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            prepare(conn, path)
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
            (stamp,) = conn.execute("SELECT stamp FROM accounts WHERE name = ?", (name,)).fetchone()
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
        """Disabling an account also revokes its resume tokens; never the last enabled admin."""
        sql = "UPDATE accounts SET enabled = ? WHERE name = ?"
        self._update_one(
            name,
            sql,
            (int(enabled), name),
            revoke_tokens=not enabled,
            keep_an_admin=not enabled,
        )

    def set_admin(self, name: str, is_admin: bool) -> None:
        """Make ``name`` an admin or a plain user; never demote the last enabled admin.

        Counted as an account change (``accounts_version``), so the server ends the
        account's sessions, which hold the role they logged in with.
        """
        sql = "UPDATE accounts SET is_admin = ? WHERE name = ?"
        self._update_one(name, sql, (int(is_admin), name), keep_an_admin=not is_admin)

    def remove_account(self, name: str) -> None:
        """Delete an account and its messages; never the last enabled admin."""
        self._update_one(name, "DELETE FROM accounts WHERE name = ?", (name,), keep_an_admin=True)

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
        keep_an_admin: bool = False,
    ) -> None:
        with self._transaction() as conn:
            if keep_an_admin:
                _refuse_last_admin(conn, name)
            if conn.execute(sql, params).rowcount == 0:
                raise NoSuchAccount(f"no account named {name}")
            if revoke_tokens:
                conn.execute("DELETE FROM resume_tokens WHERE account = ?", (name,))
            if renew:
                for statement in _RENEW_STAMP:
                    conn.execute(statement, () if "?" not in statement else (name,))

    # -- rooms ------------------------------------------------------------------------------

    def list_rooms(self) -> list[RoomRecord]:
        return self._rooms("", ())

    def get_room(self, name: str) -> RoomRecord | None:
        found = self._rooms("WHERE name = ?", (name,))
        return found[0] if found else None

    def _rooms(self, where: str, params: tuple[str, ...]) -> list[RoomRecord]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {ROOM_COLUMNS} FROM rooms {where} ORDER BY name",  # noqa: S608 -- constant clauses
                params,
            ).fetchall()
            roles = conn.execute(
                f"SELECT room, name, role FROM room_roles {where.replace('name', 'room')}",  # noqa: S608 -- constant clauses
                params,
            ).fetchall()
        return room_records(rows, roles)

    def create_room(self, name: str, owner: str | None) -> bool:
        """A new room owned (and operated) by ``owner``; False if the name is taken."""
        with self._transaction() as conn:
            created = conn.execute(
                "INSERT INTO rooms (name, owner, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, owner, iso_utc(self._clock())),
            ).rowcount
            if created and owner is not None:
                conn.execute(
                    "INSERT INTO room_roles (room, name, role) VALUES (?, ?, 'operator')",
                    (name, owner),
                )
        return created == 1

    def set_room(self, name: str, *, topic: str | None = None, mode: str | None = None) -> None:
        """Change the topic or the mode. Making a room private invites its present members
        is the caller's to do (:meth:`set_role`), in the order it decides."""
        with self._transaction() as conn:
            if topic is not None:
                conn.execute("UPDATE rooms SET topic = ? WHERE name = ?", (topic, name))
            if mode is not None:
                conn.execute("UPDATE rooms SET mode = ? WHERE name = ?", (mode, name))

    def set_role(self, room: str, name: str, role: str, held: bool) -> None:
        """Give (``held``) or take a role (operator, invited, banned). A ban withdraws any
        invitation and operator role."""
        with self._transaction() as conn:
            if not held:
                conn.execute(
                    "DELETE FROM room_roles WHERE room = ? AND name = ? AND role = ?",
                    (room, name, role),
                )
                return
            if role == "banned":
                conn.execute(
                    "DELETE FROM room_roles WHERE room = ? AND name = ?"
                    " AND role IN ('invited', 'operator')",
                    (room, name),
                )
            conn.execute(
                "INSERT INTO room_roles (room, name, role) SELECT name, ?, ? FROM rooms"
                " WHERE name = ? ON CONFLICT DO NOTHING",
                (name, role, room),
            )

    def destroy_room(self, name: str) -> bool:
        """Delete the room, its roles and its history; False if there was none."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM room_roles WHERE room = ?", (name,))
            return conn.execute("DELETE FROM rooms WHERE name = ?", (name,)).rowcount == 1

    def rooms_version(self) -> int:
        """Bumped by every change to rooms and their roles (the server polls it)."""
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'rooms_version'").fetchone()
        return int(row[0]) if row else 0

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

    def token_login(self, digest: bytes, name: str, now: str) -> Account | None:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_LOGIN_COLUMNS} FROM resume_tokens AS t"  # noqa: S608 -- constant column list
                " JOIN accounts AS a ON a.name = t.account"
                " WHERE t.digest = ? AND a.name = ? AND t.expires_at > ? AND a.enabled",
                (digest, name, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE accounts SET last_login = ? WHERE name = ?", (iso_utc(self._clock()), name)
            )
        return _account(row)

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

    def highest_id(self) -> int:
        """The highest id reserved or stored: what a cluster's id counter must stay above
        (a Redis that lost its data would otherwise give an id again)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT max(value) FROM (SELECT value FROM meta WHERE key = 'id_high_water'"
                " UNION ALL SELECT coalesce(max(id), 0) FROM messages) AS highs"
            ).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

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

    def claim_pending(
        self, recipient: str, limit: int, claimer: str, lease_s: float
    ) -> list[StoredMessage]:
        """Take up to ``limit`` of ``recipient``'s waiting messages, oldest first, that no
        other live lease holds, and lease them to ``claimer`` for ``lease_s`` seconds.

        The write lock (``BEGIN IMMEDIATE``) makes the choice and the lease one step: two
        claimers, in this process or another, never take the same message while a lease
        lives. A lease that has run out is anybody's again.
        """
        if limit <= 0:
            return []
        with self._transaction() as conn:
            now = time.time()  # the host's clock: every process on this file shares it
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 -- constant columns
                " WHERE recipient = ? AND delivered = 0"
                " AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?",
                (recipient, now, limit),
            ).fetchall()
            if rows:
                conn.execute(
                    "UPDATE messages SET claimed_by = ?, claimed_until = ?"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (claimer, now + lease_s, json.dumps([row[0] for row in rows])),
                )
        return [StoredMessage(*row) for row in rows]

    def release_pending(self, ids: Sequence[int], claimer: str) -> None:
        """End ``claimer``'s leases on ``ids`` (it wrote none of them): claimable at once.
        Messages leased to another claimer since are left alone."""
        if not ids:
            return
        with self._transaction() as conn:
            conn.execute(
                "UPDATE messages SET claimed_by = NULL, claimed_until = NULL"
                " WHERE id IN (SELECT value FROM json_each(?)) AND claimed_by = ?",
                (json.dumps(list(ids)), claimer),
            )

    def mark_delivered(self, ids: Sequence[int]) -> None:
        """Written to a session: never pending again, and no longer leased to anybody."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE messages SET delivered = 1, claimed_by = NULL, claimed_until = NULL"
                " WHERE id = ?",
                [(i,) for i in ids],
            )

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
        """Copy the database with SQLite's online backup API: safe while the server runs.

        The copy is a new file, mode 0600, in rollback journal mode: one self-contained
        file, readable without side files (``check_file``) and ready to put in place.
        """
        try:
            # O_EXCL: a new file of ours, never an existing one or a planted symlink.
            os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
        except FileExistsError:
            raise StoreError(f"{destination} exists; choose a new file for the backup") from None
        except OSError as exc:
            raise StoreError(f"cannot create {destination}: {exc.strerror}") from None
        os.chmod(destination, PRIVATE_MODE)  # in case the umask took the owner's bits
        try:
            target = sqlite3.connect(destination, isolation_level=None)
        except sqlite3.Error as exc:
            destination.unlink(missing_ok=True)
            raise StoreError(f"cannot create {destination}: {exc}") from exc
        try:
            with self._connection() as conn:
                conn.backup(target)
            try:
                target.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot finish the backup {destination}: {exc}") from exc
        except BaseException:
            target.close()
            destination.unlink(missing_ok=True)
            raise
        target.close()

    def check(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks; empty when sound."""
        with self._connection() as conn:
            problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            problems = [p for p in problems if p != "ok"]
            problems += [repr(row) for row in conn.execute("PRAGMA foreign_key_check")]
        return problems


def check_file(path: Path) -> list[str]:
    """Problems of the Sealroom database file at ``path`` (a backup, say); empty when sound.

    Read only: the file is never migrated, switched to WAL or created, and no side files are
    left beside it. Each problem names the path.
    """
    if not path.is_file():
        return [f"{path.absolute()}: no such file" + (" (a directory)" if path.is_dir() else "")]
    # A file no one is writing (no -wal or -journal beside it) is opened as immutable, so
    # SQLite creates no -shm beside it either.
    busy = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-journal"))
    try:
        conn = sqlite3.connect(_uri(path, "ro", immutable=not busy), uri=True)
    except sqlite3.Error as exc:
        return [f"{path}: cannot open: {exc}"]
    try:
        found = user_version(conn)
        if found > len(MIGRATIONS):
            return [f"{path}: schema version {found} is newer than this Sealroom's"]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if found == 0 or "accounts" not in tables:
            return [f"{path}: not a Sealroom database (no accounts table)"]
        problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        problems = [p for p in problems if p != "ok"]
        problems += [repr(row) for row in conn.execute("PRAGMA foreign_key_check")]
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            return [f"{path}: not an SQLite database"]
        return [f"{path}: {exc}"]
    finally:
        conn.close()
    return [f"{path}: {problem}" for problem in problems]


def _uri(path: Path, mode: str, *, immutable: bool = False) -> str:
    """A ``file:`` URI for ``path`` with SQLite's open ``mode`` (ro, rw, rwc)."""
    quoted = urllib.parse.quote(str(path.absolute()))
    return f"file:{quoted}?mode={mode}" + ("&immutable=1" if immutable else "")


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then it is left as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, PRIVATE_MODE)  # the umask may have taken the owner's bits away
    finally:
        os.close(fd)


def _refuse_last_admin(conn: sqlite3.Connection, name: str) -> None:
    """LastAdmin if ``name`` is the only enabled admin (inside the caller's transaction)."""
    row = conn.execute(
        "SELECT is_admin = 1 AND enabled = 1 FROM accounts WHERE name = ?", (name,)
    ).fetchone()
    if row is None or not row[0]:
        return
    (others,) = conn.execute(
        "SELECT count(*) FROM accounts WHERE is_admin = 1 AND enabled = 1 AND name != ?",
        (name,),
    ).fetchone()
    if not others:
        raise LastAdmin(f"{name} is the only enabled admin; make another account an admin first")


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
