"""Rows into domain records, the same for every engine: the SQL differs, the shapes do not."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sealroom.core.model import RoomRecord

ROOM_COLUMNS = "name, owner, mode, topic, created_at, version"


def room_records(
    rows: Iterable[tuple[Any, ...]], roles: Iterable[tuple[Any, ...]]
) -> list[RoomRecord]:
    """``rows`` of :data:`ROOM_COLUMNS` and ``roles`` of (room, name, role) into records."""
    held: dict[tuple[str, str], set[str]] = {}
    for room, name, role in roles:
        held.setdefault((room, role), set()).add(name)
    return [
        RoomRecord(
            name=name,
            owner=owner,
            mode=mode,
            topic=topic,
            created_at=created_at,
            operators=frozenset(held.get((name, "operator"), ())),
            invited=frozenset(held.get((name, "invited"), ())),
            banned=frozenset(held.get((name, "banned"), ())),
            version=int(version),
        )
        for name, owner, mode, topic, created_at, version in rows
    ]
