"""The SQLite store's schema: how a connection is prepared, and the steps that build it.

The schema grows by appending steps to ``MIGRATIONS``; ``PRAGMA user_version`` records how
many have run. Steps already released are never edited, so every database reaches the same
schema by the same path. (Split from :mod:`sealroom.store.sqlite`, which keeps the store.)
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final

from sealroom.core.model import SchemaTooNew, StoreError

BUSY_TIMEOUT_MS: Final = 5000

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "prepare", "user_version"]

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

_MIGRATION_5_ROOMS: Final = (
    # Version 5: rooms as stored, owned entities. Rooms that only have history become open
    # rooms without an owner; so does the default room, which the server adds at start.
    """
    CREATE TABLE rooms (
        name       TEXT PRIMARY KEY NOT NULL,
        owner      TEXT,
        mode       TEXT NOT NULL DEFAULT 'open' CHECK (mode IN ('open', 'private')),
        topic      TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        -- Bumped by every change to the room or its roles: whoever holds an older copy
        -- (the server's memory, a poll racing a change) knows it is older.
        version    INTEGER NOT NULL DEFAULT 1
    )
    """,
    # Who holds which role in which room. Rows go with their room; an account's go with it.
    """
    CREATE TABLE room_roles (
        room TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('operator', 'invited', 'banned')),
        PRIMARY KEY (room, name, role)
    )
    """,
    """
    INSERT INTO rooms (name, created_at)
        SELECT DISTINCT room, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM messages
        WHERE room IS NOT NULL
    """,
    "INSERT INTO meta (key, value) VALUES ('rooms_version', 0)",
    # The server polls rooms_version to apply what `sealroom room …` changed.
    """
    CREATE TRIGGER rooms_changed_insert AFTER INSERT ON rooms
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'rooms_version'; END
    """,
    """
    CREATE TRIGGER rooms_changed_update AFTER UPDATE OF owner, mode, topic ON rooms
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'rooms_version';
        UPDATE rooms SET version = version + 1 WHERE name = NEW.name;
    END
    """,
    """
    CREATE TRIGGER rooms_changed_delete AFTER DELETE ON rooms
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'rooms_version';
        DELETE FROM messages WHERE room = OLD.name;
    END
    """,
    # A removed account's rooms lose their owner and its roles go: a name created again is
    # another account and inherits nothing.
    """
    CREATE TRIGGER rooms_account_removed AFTER DELETE ON accounts
    BEGIN
        UPDATE rooms SET owner = NULL WHERE owner = OLD.name;
        DELETE FROM room_roles WHERE name = OLD.name;
    END
    """,
    """
    CREATE TRIGGER room_roles_changed_insert AFTER INSERT ON room_roles
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'rooms_version';
        UPDATE rooms SET version = version + 1 WHERE name = NEW.room;
    END
    """,
    """
    CREATE TRIGGER room_roles_changed_delete AFTER DELETE ON room_roles
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'rooms_version';
        UPDATE rooms SET version = version + 1 WHERE name = OLD.room;
    END
    """,
)
MIGRATIONS = (*MIGRATIONS, _MIGRATION_5_ROOMS)

_MIGRATION_6_LEASES: Final = (
    # Version 6: leases on stored private messages. Several processes (or a cluster's nodes)
    # deliver from one database: a session claims what it is about to write, for a while,
    # so that no other session writes the same message meanwhile. claimed_until is Unix
    # time in seconds; both columns are NULL when nobody holds the message.
    "ALTER TABLE messages ADD COLUMN claimed_by TEXT",
    """
    ALTER TABLE messages ADD COLUMN claimed_until REAL
        CHECK ((claimed_by IS NULL) = (claimed_until IS NULL))
    """,
)
MIGRATIONS = (*MIGRATIONS, _MIGRATION_6_LEASES)


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Configure a fresh connection and bring the schema up to date."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        # The first read of the file header: this is where a non-database file shows up.
        _check_version(user_version(conn), path)
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


def user_version(conn: sqlite3.Connection) -> int:
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
        found = user_version(conn)
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
