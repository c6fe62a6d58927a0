"""The PostgreSQL schema, and how a database gets it.

The schema grows by appending steps to ``MIGRATIONS``; the one-row table ``schema_version``
records how many have run. Steps already released are never edited. Concurrent first
starts (several nodes at once) take turns on an advisory lock, so each step runs once.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from sealroom.core.model import SchemaTooNew, StoreError

Connection = psycopg.Connection[tuple[Any, ...]]

# Any constant will do: it only has to be the same in every process that migrates.
_SCHEMA_LOCK: Final = 0x5EA1_5C4E_3A00_0001

# Each step is the list of statements that takes the schema from version N to N + 1 (the
# step at index 0 makes version 1). Append new steps; never edit a released one.
#
# Names are compared byte for byte (COLLATE "C"), as SQLite does, whatever the database's
# locale. Times are the protocol's fixed-width UTC text, as in SQLite: they sort as text,
# and the store hands them back exactly as it was given them.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # meta: counters. id_high_water is the last message id ever reserved;
        # accounts_version counts the account changes that live sessions must see.
        """
        CREATE TABLE meta (
            key   text COLLATE "C" PRIMARY KEY,
            value bigint NOT NULL
        )
        """,
        "INSERT INTO meta (key, value) VALUES ('id_high_water', 0), ('accounts_version', 0)",
        # A stamp names one account record for the database's whole life: a new record and
        # every security-relevant change (password, enabled, role) take the next value.
        "CREATE SEQUENCE account_stamps AS bigint",
        """
        CREATE TABLE accounts (
            name          text COLLATE "C" PRIMARY KEY,
            password_hash text NOT NULL,
            is_admin      boolean NOT NULL,
            enabled       boolean NOT NULL DEFAULT true,
            created_at    text NOT NULL,
            last_login    text,
            stamp         bigint NOT NULL UNIQUE DEFAULT nextval('account_stamps')
        )
        """,
        # id is the wire ID. room is set for room messages; recipient for private ones,
        # which stay undelivered until written to one of the recipient's sessions.
        """
        CREATE TABLE messages (
            id         bigint PRIMARY KEY,
            room       text COLLATE "C",
            recipient  text COLLATE "C",
            sender     text COLLATE "C" NOT NULL,
            body       text NOT NULL,
            created_at text NOT NULL,
            delivered  boolean NOT NULL DEFAULT true,
            CHECK ((room IS NULL) <> (recipient IS NULL))
        )
        """,
        "CREATE INDEX messages_by_room ON messages (room, id) WHERE room IS NOT NULL",
        """
        CREATE INDEX messages_by_recipient ON messages (recipient, sender, id)
            WHERE recipient IS NOT NULL
        """,
        "CREATE INDEX messages_pending ON messages (recipient, id) WHERE NOT delivered",
        # Removing an account removes what it sent: without this, a scan of every message.
        "CREATE INDEX messages_by_sender ON messages (sender)",
        # Resume tokens, stored only as their SHA-256 digest; seq keeps the order of issue.
        """
        CREATE TABLE resume_tokens (
            digest     bytea PRIMARY KEY,
            account    text COLLATE "C" NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
            expires_at text NOT NULL,
            seq        bigint GENERATED ALWAYS AS IDENTITY
        )
        """,
        "CREATE INDEX resume_tokens_by_account ON resume_tokens (account, expires_at)",
        # A change of enabled or role is a new record: a new stamp. (A new password renews
        # it explicitly: a login that upgrades the hash of the same password must not.)
        """
        CREATE FUNCTION sealroom_renew_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.stamp := nextval('account_stamps');
            RETURN NEW;
        END
        $$
        """,
        """
        CREATE TRIGGER accounts_stamp_changed BEFORE UPDATE OF enabled, is_admin ON accounts
            FOR EACH ROW EXECUTE FUNCTION sealroom_renew_stamp()
        """,
        # The server polls accounts_version to apply CLI changes to live sessions.
        """
        CREATE FUNCTION sealroom_accounts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'accounts_version';
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER accounts_changed
            AFTER UPDATE OF enabled, password_hash, is_admin ON accounts
            FOR EACH ROW EXECUTE FUNCTION sealroom_accounts_changed()
        """,
        """
        CREATE FUNCTION sealroom_account_removed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'accounts_version';
            DELETE FROM messages WHERE sender = OLD.name OR recipient = OLD.name;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER accounts_removed AFTER DELETE ON accounts
            FOR EACH ROW EXECUTE FUNCTION sealroom_account_removed()
        """,
    ),
    (
        # Rooms as stored, owned entities (as SQLite's schema 5): a room and its roles
        # outlive restarts and empty rooms until destroyed. ``version`` is renewed by every
        # change to the room or its roles; ``rooms_version`` counts them for the poll.
        "INSERT INTO meta (key, value) VALUES ('rooms_version', 0)",
        """
        CREATE TABLE rooms (
            name       text COLLATE "C" PRIMARY KEY,
            owner      text COLLATE "C",
            mode       text NOT NULL DEFAULT 'open' CHECK (mode IN ('open', 'private')),
            topic      text NOT NULL DEFAULT '',
            created_at text NOT NULL,
            version    bigint NOT NULL DEFAULT 1
        )
        """,
        """
        CREATE TABLE room_roles (
            room text COLLATE "C" NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
            name text COLLATE "C" NOT NULL,
            role text NOT NULL CHECK (role IN ('operator', 'invited', 'banned')),
            PRIMARY KEY (room, name, role)
        )
        """,
        """
        CREATE FUNCTION sealroom_rooms_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE meta SET value = value + 1 WHERE key = 'rooms_version';
            IF TG_TABLE_NAME = 'room_roles' THEN
                UPDATE rooms SET version = version + 1
                    WHERE name = COALESCE(NEW.room, OLD.room);
            END IF;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE FUNCTION sealroom_room_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.version := OLD.version + 1;
            RETURN NEW;
        END
        $$
        """,
        """
        CREATE TRIGGER rooms_version BEFORE UPDATE OF owner, mode, topic ON rooms
            FOR EACH ROW EXECUTE FUNCTION sealroom_room_version()
        """,
        """
        CREATE TRIGGER rooms_changed AFTER INSERT OR UPDATE OR DELETE ON rooms
            FOR EACH ROW EXECUTE FUNCTION sealroom_rooms_changed()
        """,
        """
        CREATE TRIGGER room_roles_changed AFTER INSERT OR DELETE ON room_roles
            FOR EACH ROW EXECUTE FUNCTION sealroom_rooms_changed()
        """,
        # A destroyed room's history goes with it; a removed account's rooms lose their
        # owner and its roles go (a name created again is another account).
        """
        CREATE FUNCTION sealroom_room_destroyed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM messages WHERE room = OLD.name;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER rooms_destroyed AFTER DELETE ON rooms
            FOR EACH ROW EXECUTE FUNCTION sealroom_room_destroyed()
        """,
        """
        CREATE FUNCTION sealroom_room_account_removed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE rooms SET owner = NULL WHERE owner = OLD.name;
            DELETE FROM room_roles WHERE name = OLD.name;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER rooms_account_removed AFTER DELETE ON accounts
            FOR EACH ROW EXECUTE FUNCTION sealroom_room_account_removed()
        """,
        """
        INSERT INTO rooms (name, created_at)
            SELECT DISTINCT room, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
            FROM messages WHERE room IS NOT NULL
        """,
    ),
    (
        # Leases on stored private messages (as SQLite's schema 6): the nodes deliver from
        # one database, so a session claims what it is about to write, for a while, and no
        # other session (on any node) writes the same message meanwhile. The database's
        # clock times them, never a node's. Both columns are NULL when nobody holds it.
        """
        ALTER TABLE messages
            ADD COLUMN claimed_by text COLLATE "C",
            ADD COLUMN claimed_until timestamptz,
            ADD CONSTRAINT messages_lease
                CHECK ((claimed_by IS NULL) = (claimed_until IS NULL))
        """,
    ),
)


def prepare(conn: Connection, location: str, *, create: bool) -> None:
    """Check the database can hold Sealroom's data and bring the schema up to date.

    All pending steps run in one transaction (PostgreSQL's DDL is transactional): a failure
    leaves the database as it was.
    """
    encoding = conn.execute("SHOW server_encoding").fetchone()
    if encoding is None or encoding[0] != "UTF8":
        found = "?" if encoding is None else encoding[0]
        raise StoreError(
            f"{location} uses the encoding {found}; Sealroom needs a UTF8 database"
            " (CREATE DATABASE ... ENCODING 'UTF8')"
        )
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            if not create:
                raise StoreError(
                    f"{location} holds no Sealroom database; `sealroom db init` creates one"
                )
            conn.execute(
                "CREATE TABLE schema_version ("
                " one boolean PRIMARY KEY DEFAULT true CHECK (one),"
                " version integer NOT NULL)"
            )
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StoreError(f"{location} has an empty schema_version table")
        found = int(row[0])
        if found > len(MIGRATIONS):
            raise SchemaTooNew(
                f"{location} has schema version {found}, but this Sealroom knows only up to "
                f"{len(MIGRATIONS)}; it was written by a newer Sealroom, upgrade to use it"
            )
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)
        if found < len(MIGRATIONS):
            conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
