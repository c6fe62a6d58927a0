"""Persistent state in a PostgreSQL database: the store a cluster's nodes share.

The same :class:`~sealroom.core.storage.Store` as :mod:`sealroom.store.sqlite`, with the same
meaning for every method; only the engine differs. A pool of connections (psycopg-pool, in
autocommit mode) serves every thread: a statement on its own is its own transaction, and the
methods that must change several things at once open one explicitly. Connecting and every
statement have a bound (``connect_timeout``, ``statement_timeout``, ``lock_timeout``), so a
database that stops answering makes calls fail with :class:`StoreError`, never hang.

Where SQLite serialises every writer (``BEGIN IMMEDIATE``), PostgreSQL runs them side by side,
so the order of statements matters: whatever revokes resume tokens first locks the account
row, then deletes the tokens in a later statement (whose snapshot sees any token a
concurrent :meth:`add_token` committed meanwhile), and :meth:`add_token` inserts only while
it holds that row in share mode, after reading its current stamp.

The schema and its migrations are in :mod:`sealroom.store.postgres_schema`; reading the URL
(its bounds added, its password kept out of messages) in :mod:`sealroom.store.postgres_url`.

The URL's password never appears in a message, a repr or :attr:`PostgresStore.location`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from sealroom.core.blocking import check_may_block
from sealroom.core.model import (
    Account,
    AccountExists,
    LastAdmin,
    NoSuchAccount,
    RoomRecord,
    StoredMessage,
    StoreError,
    iso_utc,
    utc_now,
)
from sealroom.core.text import user_name
from sealroom.store.postgres_schema import prepare
from sealroom.store.postgres_url import CONNECT_TIMEOUT_S, conninfo, location, secrets_in
from sealroom.store.rows import ROOM_COLUMNS, room_records

if TYPE_CHECKING:
    from sealroom.store.sqlite import SnapshotTotals, SqliteSnapshot

Clock = Callable[[], datetime]
Connection = psycopg.Connection[tuple[Any, ...]]
Progress = Callable[[str, int, int], None]  # (what, done, total), after each batch

POOL_WAIT_S: Final = 10.0  # for a free connection when every one is busy
# How long the pool retries a lost connection (1 s, then 2, 4 … apart) before it gives up
# and lets the next request start afresh: psycopg_pool's default of 5 minutes would, after
# an outage of ten seconds, leave a server waiting for its next try long after the
# database is back. A server passes less (open_store(serving=True)).
RECONNECT_S: Final = 300.0
# Opened as needed, up to: the store's workers, the password checks and housekeeping share
# one store (the history writer has its own and uses one connection).
POOL_SIZE: Final = 8
LOAD_BATCH: Final = 5000  # rows between progress reports while loading


MAX_TOKENS_PER_ACCOUNT: Final = 20  # older tokens of the account are dropped beyond this

_ACCOUNT_COLUMNS: Final = "name, password_hash, is_admin, enabled, created_at, last_login, stamp"
_TOKEN_LOGIN_COLUMNS: Final = ", ".join(f"a.{column}" for column in _ACCOUNT_COLUMNS.split(", "))
_MESSAGE_COLUMNS: Final = "id, room, recipient, sender, body, created_at"

# One statement per batch, whatever its size: the rows travel as one JSON array of arrays
# (made by json.dumps, in C: psycopg's text-array dumper escapes every element in Python,
# which was half the archiver's CPU per batch).
_INSERT_BATCH: Final = (
    "INSERT INTO messages (id, room, recipient, sender, body, created_at, delivered)"
    " SELECT (r->>0)::bigint, r->>1, r->>2, r->>3, r->>4, r->>5, %s"
    " FROM json_array_elements(%s::json) AS r"
    " ON CONFLICT (id) DO NOTHING"
)
# Trim every room of a batch to its newest N messages, in one statement.
_PRUNE_ROOMS: Final = (
    "DELETE FROM messages AS m USING ("
    " SELECT r.room, (SELECT min(k.id) FROM (SELECT id FROM messages"
    "  WHERE room = r.room ORDER BY id DESC LIMIT %(keep)s) AS k) AS oldest_kept"
    " FROM unnest(%(rooms)s::text[]) AS r (room)) AS t"
    " WHERE m.room = t.room AND m.id < t.oldest_kept"
)
# Trim every recipient's delivered private messages to the newest N; undelivered stay.
_PRUNE_PRIVATE: Final = (
    "DELETE FROM messages AS m USING ("
    " SELECT r.name, (SELECT min(k.id) FROM (SELECT id FROM messages"
    "  WHERE recipient = r.name AND delivered ORDER BY id DESC LIMIT %(keep)s) AS k)"
    "  AS oldest_kept"
    " FROM unnest(%(names)s::text[]) AS r (name)) AS t"
    " WHERE m.recipient = t.name AND m.delivered AND m.id < t.oldest_kept"
)


class TargetNotEmpty(StoreError):  # noqa: N818 -- names the condition, as callers read it
    """A copy into a database that already holds Sealroom data."""


def _account(row: tuple[Any, ...]) -> Account:
    name, password_hash, is_admin, enabled, created_at, last_login, stamp = row
    return Account(
        name=name,
        password_hash=password_hash,
        is_admin=is_admin,
        enabled=enabled,
        created_at=created_at,
        last_login=last_login,
        stamp=stamp,
    )


class PostgresStore:
    """The Sealroom database in PostgreSQL; safe to call from any thread.

    ``url`` is a libpq connection URI (``postgresql://user@host:port/dbname?sslmode=...``).
    With ``create`` false, a database without the Sealroom schema is refused instead of
    having the schema created in it.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utc_now,
        create: bool = True,
        pool_size: int = POOL_SIZE,
        pool_wait_s: float = POOL_WAIT_S,
        reconnect_s: float = RECONNECT_S,
    ) -> None:
        self._clock = clock
        self._secrets = secrets_in(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            # libpq's complaint may quote the URL, password and all.
            raise StoreError("not a valid PostgreSQL URL (postgresql://USER@HOST/DBNAME)") from None
        self._location = location(params)
        connection_info = conninfo(params)
        check_may_block("PostgreSQL")
        # The first connection on its own: its error says why (a pool would only time out).
        try:
            with psycopg.connect(connection_info, autocommit=True) as conn:
                prepare(conn, self._location, create=create)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot open database") from None
        self._pool: ConnectionPool[Connection] | None = ConnectionPool(
            connection_info,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=pool_wait_s,
            reconnect_timeout=reconnect_s,
            name="sealroom",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except psycopg.Error as exc:
            self._pool.close()
            raise self._error(exc, "cannot open database") from None

    def unsafe_settings(self) -> list[str]:
        """What in the server's settings could lose a commit it acknowledged; [] if none."""
        with self._connection() as conn:
            fsync = _scalar_text(conn.execute("SHOW fsync").fetchone())
            commit = _scalar_text(conn.execute("SHOW synchronous_commit").fetchone())
        problems = []
        if fsync != "on":
            problems.append("PostgreSQL runs with fsync off: a crash can corrupt it")
        if commit == "off":
            problems.append(
                "PostgreSQL runs with synchronous_commit off: a crash can lose acknowledged"
                " messages"
            )
        return problems

    @property
    def location(self) -> str:
        """The URL without its password (nor any other secret), for messages."""
        return self._location

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

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
        return f"PostgresStore({self._location!r})"

    def _error(self, exc: psycopg.Error, doing: str = "database error in") -> StoreError:
        """One line, naming the database and what went wrong, with every secret taken out."""
        detail = " ".join(str(exc).split())
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StoreError(f"{doing} {self._location}: {detail or type(exc).__name__}")

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        check_may_block("PostgreSQL")
        pool = self._pool
        if pool is None:
            raise StoreError("the database is closed")
        try:
            with pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if self._pool is None:
                raise StoreError("the database is closed") from None
            raise self._error(exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._connection() as conn, conn.transaction():
            yield conn

    # -- accounts -------------------------------------------------------------------------

    def get_account(self, name: str) -> Account | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = %s",  # noqa: S608 -- constant column list
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
        with self._connection() as conn:
            row = conn.execute(
                "INSERT INTO accounts (name, password_hash, is_admin, enabled, created_at)"
                " VALUES (%s, %s, %s, true, %s) ON CONFLICT (name) DO NOTHING RETURNING stamp",
                (name, password_hash, is_admin, account.created_at),
            ).fetchone()
        if row is None:
            raise AccountExists(f"account {name} already exists")
        return dataclasses.replace(account, stamp=int(row[0]))

    def add_accounts(self, accounts: Sequence[tuple[str, str]]) -> int:
        """Create many (name, password hash) accounts in one statement; existing names are
        left alone. Returns how many were created."""
        created_at = iso_utc(self._clock())
        names = [name for name, _ in accounts]
        hashes = [password_hash for _, password_hash in accounts]
        with self._connection() as conn:
            cursor = conn.execute(
                "INSERT INTO accounts (name, password_hash, is_admin, enabled, created_at)"
                " SELECT a.name, a.hash, false, true, %s"
                " FROM unnest(%s::text[], %s::text[]) AS a (name, hash)"
                " ON CONFLICT (name) DO NOTHING",
                (created_at, names, hashes),
            )
            return cursor.rowcount

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """A new password: a new stamp, and every resume token of the account is revoked."""
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE accounts SET password_hash = %s, stamp = nextval('account_stamps')"
                " WHERE name = %s",
                (password_hash, name),
            ).rowcount
            if changed == 0:
                raise NoSuchAccount(f"no account named {name}")
            conn.execute("DELETE FROM resume_tokens WHERE account = %s", (name,))

    def change_password(self, name: str, stamp: int, old_hash: str, new_hash: str) -> int | None:
        """``/passwd``: replace the hash only if the record is still the one with ``stamp``
        and ``old_hash`` (two concurrent changes: one wins, the other is told so); revoke
        the tokens. Returns the new stamp, or None if the record changed meanwhile."""
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE accounts SET password_hash = %s, stamp = nextval('account_stamps')"
                " WHERE name = %s AND stamp = %s AND password_hash = %s RETURNING stamp",
                (new_hash, name, stamp, old_hash),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM resume_tokens WHERE account = %s", (name,))
        return int(row[0])

    def replace_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Swap the hash only if it is still ``old_hash``; False if it changed meanwhile.

        A login that upgrades a hash to new parameters must not overwrite a password that
        was changed (from the CLI, say) between its verification and its write.
        """
        with self._connection() as conn:
            updated = conn.execute(
                "UPDATE accounts SET password_hash = %s WHERE name = %s AND password_hash = %s",
                (new_hash, name, old_hash),
            ).rowcount
        return updated == 1

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabling an account also revokes its resume tokens (the trigger renews the stamp);
        never the last enabled admin."""
        with self._transaction() as conn:
            if not enabled:
                _refuse_last_admin(conn, name)
            changed = conn.execute(
                "UPDATE accounts SET enabled = %s WHERE name = %s", (enabled, name)
            ).rowcount
            if changed == 0:
                raise NoSuchAccount(f"no account named {name}")
            if not enabled:
                conn.execute("DELETE FROM resume_tokens WHERE account = %s", (name,))

    def remove_account(self, name: str) -> None:
        """Tokens go by the foreign key, messages by the trigger, in the same transaction;
        never the last enabled admin."""
        with self._transaction() as conn:
            _refuse_last_admin(conn, name)
            if conn.execute("DELETE FROM accounts WHERE name = %s", (name,)).rowcount == 0:
                raise NoSuchAccount(f"no account named {name}")

    def set_admin(self, name: str, is_admin: bool) -> None:
        """Make ``name`` an admin or a plain user (the trigger renews the stamp); never
        demote the last enabled admin."""
        with self._transaction() as conn:
            if not is_admin:
                _refuse_last_admin(conn, name)
            changed = conn.execute(
                "UPDATE accounts SET is_admin = %s WHERE name = %s", (is_admin, name)
            ).rowcount
            if changed == 0:
                raise NoSuchAccount(f"no account named {name}")

    # -- rooms ------------------------------------------------------------------------------

    def list_rooms(self) -> list[RoomRecord]:
        return self._rooms("", ())

    def get_room(self, name: str) -> RoomRecord | None:
        found = self._rooms("WHERE name = %s", (name,))
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
        with self._transaction() as conn:
            created = conn.execute(
                "INSERT INTO rooms (name, owner, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, owner, iso_utc(utc_now())),
            ).rowcount
            if created and owner is not None:
                conn.execute(
                    "INSERT INTO room_roles (room, name, role) VALUES (%s, %s, 'operator')",
                    (name, owner),
                )
        return created == 1

    def set_room(self, name: str, *, topic: str | None = None, mode: str | None = None) -> None:
        with self._transaction() as conn:
            if topic is not None:
                conn.execute("UPDATE rooms SET topic = %s WHERE name = %s", (topic, name))
            if mode is not None:
                conn.execute("UPDATE rooms SET mode = %s WHERE name = %s", (mode, name))

    def set_role(self, room: str, name: str, role: str, held: bool) -> None:
        with self._transaction() as conn:
            if not held:
                conn.execute(
                    "DELETE FROM room_roles WHERE room = %s AND name = %s AND role = %s",
                    (room, name, role),
                )
                return
            if role == "banned":
                conn.execute(
                    "DELETE FROM room_roles WHERE room = %s AND name = %s"
                    " AND role IN ('invited', 'operator')",
                    (room, name),
                )
            conn.execute(
                "INSERT INTO room_roles (room, name, role) SELECT name, %s, %s FROM rooms"
                " WHERE name = %s ON CONFLICT DO NOTHING",
                (name, role, room),
            )

    def destroy_room(self, name: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM rooms WHERE name = %s", (name,)).rowcount == 1

    def rooms_version(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'rooms_version'").fetchone()
        return _scalar(row)

    def record_login(self, name: str) -> None:
        with self._connection() as conn:
            changed = conn.execute(
                "UPDATE accounts SET last_login = %s WHERE name = %s",
                (iso_utc(self._clock()), name),
            ).rowcount
        if changed == 0:
            raise NoSuchAccount(f"no account named {name}")

    def list_accounts(self) -> list[Account]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name",  # noqa: S608 -- constant column list
            ).fetchall()
        return [_account(row) for row in rows]

    def count_accounts(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT count(*) FROM accounts").fetchone()
        return _scalar(row)

    # -- resume tokens ----------------------------------------------------------------------

    def add_token(
        self, name: str, digest: bytes, expires_at: str, now: str, stamp: int | None = None
    ) -> bool:
        """Store a token digest, dropping expired (at ``now``) and surplus tokens of the account.

        With ``stamp``, only for that very record: False (nothing stored) if the account was
        changed, removed or re-created since, so a session never mints for another account.
        The account row is held in share mode until the commit: a concurrent change of
        password or enabled waits for this token, then revokes it with the rest.
        """
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO resume_tokens (digest, account, expires_at)"
                " SELECT %s, name, %s FROM accounts"
                " WHERE name = %s AND (%s::bigint IS NULL OR stamp = %s) FOR SHARE",
                (digest, expires_at, name, stamp, stamp),
            ).rowcount
            if inserted != 1:
                return False
            conn.execute(
                "DELETE FROM resume_tokens WHERE account = %s AND (expires_at <= %s"
                " OR digest IN (SELECT digest FROM resume_tokens WHERE account = %s"
                " ORDER BY expires_at DESC, seq DESC OFFSET %s))",
                (name, now, name, MAX_TOKENS_PER_ACCOUNT),
            )
        return True

    def token_account(self, digest: bytes) -> tuple[str, str] | None:
        """(account, expires_at) of the token with this digest, if it exists."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT account, expires_at FROM resume_tokens WHERE digest = %s", (digest,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def token_login(self, digest: bytes, name: str, now: str) -> Account | None:
        # One statement: the account row is locked for the update and its WHERE checked
        # again on the newest version, so a disable committed meanwhile refuses the login.
        with self._connection() as conn:
            row = conn.execute(
                f"UPDATE accounts AS a SET last_login = %s FROM resume_tokens AS t"  # noqa: S608 -- constant column list
                " WHERE t.digest = %s AND t.account = a.name AND a.name = %s"
                f" AND t.expires_at > %s AND a.enabled RETURNING {_TOKEN_LOGIN_COLUMNS}",
                (iso_utc(self._clock()), digest, name, now),
            ).fetchone()
        return None if row is None else _account(row)

    # -- change detection -----------------------------------------------------------------

    def accounts_version(self) -> int:
        """A counter that triggers bump on every disable, enable, role or password change
        and removal; the server polls it to apply CLI changes to live sessions."""
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'accounts_version'").fetchone()
        return _scalar(row)

    # -- message ids ------------------------------------------------------------------------

    def reserve_ids(self, count: int) -> range:
        """Durably reserve ``count`` fresh message ids, above every id ever handed out.

        A counter row, not a sequence: a block must be contiguous, and nextval hands
        concurrent callers interleaved values. The row's lock makes concurrent reservations
        (several nodes) take turns, and the commit makes the block durable before it is used.
        """
        with self._connection() as conn:
            row = conn.execute(
                "UPDATE meta SET value = value + %s WHERE key = 'id_high_water' RETURNING value",
                (count,),
            ).fetchone()
        high = _scalar(row)
        return range(high - count + 1, high + 1)

    def highest_id(self) -> int:
        """The highest id reserved or stored: what a cluster's id counter must stay above
        (a Redis that lost its data would otherwise give an id again)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT max(value) FROM (SELECT value FROM meta WHERE key = 'id_high_water'"
                " UNION ALL SELECT coalesce(max(id), 0) FROM messages) AS highs"
            ).fetchone()
        return _scalar(row)

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
        same transaction trim the rooms and recipients they touch to their retention.

        Without a trim (most batches: a cluster trims once a second) the insert is one
        statement, its own transaction on this autocommit connection: one round trip.
        psycopg's ``transaction()`` costs a synchronisation for BEGIN, one for COMMIT and
        one for the pipeline: measured on one message, ≈ 0.35 ms of the node's CPU and
        0.25 ms of the server's, against 0.1 and 0.1 ms for the statement alone. With a
        trim: BEGIN, the insert, the trims and COMMIT, pipelined.
        """
        if not messages:
            return
        rows = json.dumps(list(messages), ensure_ascii=False, separators=(",", ":"))
        rooms = sorted({m.room for m in messages if m.room is not None})
        names = sorted({m.recipient for m in messages if m.recipient is not None})
        trim_rooms = keep_per_room is not None and bool(rooms)
        trim_private = keep_per_recipient is not None and bool(names)
        if not (trim_rooms or trim_private):
            with self._connection() as conn:
                conn.execute(_INSERT_BATCH, (delivered, rows))
            return
        with self._connection() as conn, conn.pipeline(), conn.transaction():
            conn.execute(_INSERT_BATCH, (delivered, rows))
            if trim_rooms:
                conn.execute(_PRUNE_ROOMS, {"rooms": rooms, "keep": keep_per_room})
            if trim_private:
                conn.execute(_PRUNE_PRIVATE, {"names": names, "keep": keep_per_recipient})

    def room_history(self, room: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages of ``room``, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = %s"  # noqa: S608 -- constant columns
                " ORDER BY id DESC LIMIT %s",
                (room, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in reversed(rows)]

    def conversation(self, one: str, other: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` private messages between two accounts, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 -- constant columns
                " WHERE (recipient = %s AND sender = %s) OR (recipient = %s AND sender = %s)"
                " ORDER BY id DESC LIMIT %s",
                (one, other, other, one, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in reversed(rows)]

    def pending_count(self, recipient: str) -> int:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM messages WHERE recipient = %s AND NOT delivered",
                (recipient,),
            ).fetchone()
        return _scalar(row)

    def pending_count_from(self, sender: str, recipient: str) -> int:
        """Stored messages from ``sender`` still waiting for ``recipient``."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM messages"
                " WHERE recipient = %s AND sender = %s AND NOT delivered",
                (recipient, sender),
            ).fetchone()
        return _scalar(row)

    def pending(self, recipient: str, limit: int) -> list[StoredMessage]:
        """Private messages waiting for ``recipient``, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 -- constant columns
                " WHERE recipient = %s AND NOT delivered ORDER BY id LIMIT %s",
                (recipient, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in rows]

    def claim_pending(
        self, recipient: str, limit: int, claimer: str, lease_s: float
    ) -> list[StoredMessage]:
        """Take up to ``limit`` of ``recipient``'s waiting messages, oldest first, that no
        other live lease holds, and lease them to ``claimer`` for ``lease_s`` seconds.

        One statement: the rows it picks are locked as it picks them, and rows another
        claimer holds locked are skipped, not waited for, so concurrent claimers (on any
        node) never take the same message while a lease lives, and never block each other.
        A lease that has run out (by the database's clock) is anybody's again.
        """
        if limit <= 0:
            return []
        with self._connection() as conn:
            rows = conn.execute(
                "UPDATE messages SET claimed_by = %(claimer)s,"  # noqa: S608 -- constant columns
                " claimed_until = now() + %(lease)s * interval '1 second'"
                " WHERE id IN (SELECT id FROM messages"
                "  WHERE recipient = %(recipient)s AND NOT delivered"
                "  AND (claimed_until IS NULL OR claimed_until < now())"
                "  ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_MESSAGE_COLUMNS}",
                {
                    "claimer": claimer,
                    "lease": float(lease_s),
                    "recipient": recipient,
                    "limit": limit,
                },
            ).fetchall()
        return sorted((StoredMessage(*row) for row in rows), key=lambda m: m.id)

    def release_pending(self, ids: Sequence[int], claimer: str) -> None:
        """End ``claimer``'s leases on ``ids`` (it wrote none of them): claimable at once.
        Messages leased to another claimer since are left alone."""
        if not ids:
            return
        with self._connection() as conn:
            conn.execute(
                "UPDATE messages SET claimed_by = NULL, claimed_until = NULL"
                " WHERE id = ANY(%s::bigint[]) AND claimed_by = %s",
                (list(ids), claimer),
            )

    def mark_delivered(self, ids: Sequence[int]) -> None:
        """Written to a session: never pending again, and no longer leased to anybody."""
        if not ids:
            return
        with self._connection() as conn:
            conn.execute(
                "UPDATE messages SET delivered = true, claimed_by = NULL, claimed_until = NULL"
                " WHERE id = ANY(%s::bigint[])",
                (list(ids),),
            )

    # -- maintenance ------------------------------------------------------------------------

    def backup(self, destination: Path) -> None:
        """Not this store's job: PostgreSQL has its own tools for consistent backups."""
        raise StoreError(
            f"{self._location} is a PostgreSQL database: back it up with pg_dump"
            " (or continuous archiving), not with sealroom db backup"
        )

    def check(self) -> list[str]:
        """Broken invariants that PostgreSQL's constraints do not already enforce."""
        with self._connection() as conn:
            high, top_id, stamps, top_stamp, called = _row(
                conn.execute(
                    "SELECT (SELECT value FROM meta WHERE key = 'id_high_water'),"
                    " (SELECT coalesce(max(id), 0) FROM messages),"
                    " s.last_value, (SELECT coalesce(max(stamp), 0) FROM accounts), s.is_called"
                    " FROM account_stamps AS s"
                ).fetchone()
            )
        problems = []
        if top_id > high:
            problems.append(f"message id {top_id} is above the id high-water mark {high}")
        if top_stamp > (stamps if called else stamps - 1):
            problems.append(f"account stamp {top_stamp} is above the stamp sequence ({stamps})")
        return problems

    # -- moving in ------------------------------------------------------------------------

    def load(self, snapshot: SqliteSnapshot, progress: Progress) -> SnapshotTotals:
        """Fill this empty database with everything in ``snapshot``, in one transaction;
        returns what the snapshot held.

        Refuses (:class:`TargetNotEmpty`) a database holding any account, message or token,
        or having reserved any id. A failure part way leaves the database as it was. The
        tables are locked first, so two copies into one database cannot both succeed.
        """
        totals = snapshot.totals()
        with self._transaction() as conn:
            conn.execute("SET LOCAL statement_timeout = 0")  # a large copy takes a while
            conn.execute(
                "LOCK TABLE accounts, messages, resume_tokens, meta IN SHARE ROW EXCLUSIVE MODE"
            )
            self._refuse_if_not_empty(conn)
            with conn.cursor().copy(f"COPY accounts ({_ACCOUNT_COLUMNS}) FROM STDIN") as copy:
                for done, account in enumerate(snapshot.accounts(), start=1):
                    copy.write_row(
                        (
                            account.name,
                            account.password_hash,
                            account.is_admin,
                            account.enabled,
                            account.created_at,
                            account.last_login,
                            account.stamp,
                        )
                    )
                    if done % LOAD_BATCH == 0:
                        progress("accounts", done, totals.accounts)
            progress("accounts", totals.accounts, totals.accounts)
            with conn.cursor().copy(
                f"COPY messages ({_MESSAGE_COLUMNS}, delivered) FROM STDIN"
            ) as copy:
                for done, (message, delivered) in enumerate(snapshot.messages(), start=1):
                    copy.write_row((*message, delivered))
                    if done % LOAD_BATCH == 0:
                        progress("messages", done, totals.messages)
            progress("messages", totals.messages, totals.messages)
            with conn.cursor().copy(
                "COPY resume_tokens (digest, account, expires_at) FROM STDIN"
            ) as copy:
                for token in snapshot.tokens():
                    copy.write_row(token)
            progress("tokens", totals.tokens, totals.tokens)
            # Above everything the source ever handed out, not only what it still holds.
            stamp = max(totals.stamp_high_water, totals.top_stamp)
            conn.execute("SELECT setval('account_stamps', %s, %s)", (max(stamp, 1), stamp > 0))
            conn.execute(
                "UPDATE meta SET value = %s WHERE key = 'id_high_water'",
                (max(totals.id_high_water, totals.top_id),),
            )
            conn.execute(
                "UPDATE meta SET value = %s WHERE key = 'accounts_version'",
                (totals.accounts_version,),
            )
        return totals

    def _refuse_if_not_empty(self, conn: Connection) -> None:
        accounts, messages, tokens, high = _row(
            conn.execute(
                "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM messages),"
                " (SELECT count(*) FROM resume_tokens),"
                " (SELECT value FROM meta WHERE key = 'id_high_water')"
            ).fetchone()
        )
        if accounts or messages or tokens or high:
            raise TargetNotEmpty(
                f"{self._location} is not empty ({accounts} accounts, {messages} messages,"
                f" {tokens} resume tokens, ids reserved up to {high}); copy only into an"
                " empty database"
            )


def _refuse_last_admin(conn: Connection, name: str) -> None:
    """LastAdmin if ``name`` is the only enabled admin (inside the caller's transaction,
    whose row locks keep two demotions from both passing)."""
    rows = conn.execute(
        "SELECT name FROM accounts WHERE is_admin AND enabled FOR UPDATE"
    ).fetchall()
    admins = {row[0] for row in rows}
    if admins == {name}:
        raise LastAdmin(f"{name} is the only enabled admin; make another account an admin first")


def _scalar(row: tuple[Any, ...] | None) -> int:
    if row is None:  # every query here returns a row; none means a damaged schema
        raise StoreError("the database returned no row where one was due")
    return int(row[0])


def _row(row: tuple[Any, ...] | None) -> tuple[int, ...]:
    if row is None:
        raise StoreError("the database returned no row where one was due")
    return tuple(int(value) for value in row)


def _scalar_text(row: tuple[Any, ...] | None) -> str:
    return "" if row is None else str(row[0])
