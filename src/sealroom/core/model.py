"""The domain's nouns, shared by every layer: accounts, stored messages, the time format.

They live here, not beside the SQL, so that the session, the policies and the state never
import a storage engine to name what they handle.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple


class StoreError(Exception):
    """The database cannot be used: wrong file, newer schema, I/O or lock failure."""


class SchemaTooNew(StoreError):  # noqa: N818 -- names the condition, as callers read it
    """The file was migrated by a newer Sealroom; writing to it could corrupt its data."""


class AccountExists(StoreError):  # noqa: N818 -- names the condition, as callers read it
    pass


class NoSuchAccount(StoreError):  # noqa: N818 -- names the condition, as callers read it
    pass


class MissingDatabase(StoreError):  # noqa: N818 -- names the condition, as callers read it
    """Asked to open only an existing database, and there is none at the path."""


class LastAdmin(StoreError):  # noqa: N818 -- names the condition, as callers read it
    """The change would leave the server without an enabled admin."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    # Kept out of repr so an account can be logged or shown in a traceback safely.
    password_hash: str = field(repr=False)
    is_admin: bool
    enabled: bool
    created_at: str
    last_login: str | None
    # Which record this is: unique across the database's life and renewed by every change
    # that matters for security (password, enabled, role). A session holds the stamp it
    # logged in with; a different stamp under the same name is another account.
    stamp: int = 0


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """The one time format of the wire protocol and the database: ``2024-05-01T12:00:00.000Z``.

    Fixed width and always UTC, so stored times also sort correctly as text.
    """
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no defined UTC time")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StoredMessage(NamedTuple):
    """A room message (``room`` set) or a private message (``recipient`` set).

    A named tuple, not a dataclass: one is made per room message on the fan-out path, where
    a frozen dataclass costs twice as much, and a batch goes to SQLite as JSON arrays as is.
    """

    id: int
    room: str | None
    recipient: str | None
    sender: str
    body: str
    created_at: str

    @property
    def target(self) -> str:
        """The TARGET field of a ``HIST`` line: the room, or the private recipient."""
        return self.room if self.room is not None else str(self.recipient)


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """A room as stored: it outlives restarts and empty rooms until it is destroyed."""

    name: str
    owner: str | None
    mode: str  # "open" or "private"
    topic: str
    created_at: str
    operators: frozenset[str] = frozenset()
    invited: frozenset[str] = frozenset()
    banned: frozenset[str] = frozenset()
    version: int = 1  # renewed by every change to the room or its roles


class Mode(enum.Enum):
    OPEN = "open"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class RoomView:
    """What the room policy (:mod:`sealroom.policy.rooms`) needs to know of a room."""

    owner: str | None
    mode: Mode
    operators: Collection[str]
    invited: Collection[str]
    banned: Collection[str]
    members: Collection[str]  # names with a session in the room now
