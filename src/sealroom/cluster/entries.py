"""What a bus entry may hold, and what each shared event does on every node.

Every byte a node reads from Redis is hostile until checked, like a byte from a client:
names and rooms against their grammar, texts for line breaks, controls and bidi overrides,
counts for digits, sizes bounded. A malformed entry is logged and skipped: never relayed,
never repaired, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sealroom.core.model import RoomRecord
from sealroom.core.text import has_forbidden_chars, room_name, user_name
from sealroom.state.hub import Hub

log = logging.getLogger("sealroom.cluster")

MAX_PAYLOAD = 16_384  # bytes of an event's JSON; more is refused (and, read, ignored)
MAX_TEXT = 65_536  # characters of a message read from the bus


class Node(Protocol):
    """What an event may touch on the node that applies it."""

    @property
    def hub(self) -> Hub: ...

    def answer_census(self, ask: str) -> None: ...


# -- events: what each kind of shared event does on every node ---------------------------------


def _kick(bus: Node, payload: dict[str, Any], mine: bool) -> None:
    name, reason = payload["name"], payload["reason"]
    if is_user(name) and is_text(reason):
        closed = bus.hub.disconnect(name, reason)
        if closed:
            log.info("kicked %s (%d sessions here)", name, closed)


def _wall(bus: Node, payload: dict[str, Any], mine: bool) -> None:
    sender, text = payload["from"], payload["text"]
    if is_user(sender) and is_text(text):
        bus.hub.wall(sender, text)


def _room_event(bus: Node, payload: dict[str, Any], mine: bool) -> None:
    """A room's new settings, and what to say about them; the node that made the change
    applied and said it already."""
    if mine:
        return
    raw = payload["record"]
    record = RoomRecord(
        name=raw["name"],
        owner=raw["owner"],
        mode=raw["mode"],
        topic=raw["topic"],
        created_at=raw["created_at"],
        operators=frozenset(raw["operators"]),
        invited=frozenset(raw["invited"]),
        banned=frozenset(raw["banned"]),
        version=int(raw["version"]),
    )
    if not is_room(record.name) or record.mode not in ("open", "private"):
        raise ValueError(record.name)
    names = [record.owner or "", *record.operators, *record.invited, *record.banned]
    if not all(is_user(n) for n in names if n) or not is_text(record.topic):
        raise ValueError(record.name)
    bus.hub.apply(record, by=payload.get("by") or "*", reason=payload.get("reason") or "")
    line = payload.get("line")
    if isinstance(line, str) and line and is_text(line):
        data = (line + "\n").encode()
        notify = payload.get("notify")
        if isinstance(notify, str) and is_user(notify):
            bus.hub.notify(notify, data)
        else:
            bus.hub.announce(record.name, data)


def _destroy(bus: Node, payload: dict[str, Any], mine: bool) -> None:
    room, by = payload["room"], payload["by"]
    if not mine and is_room(room) and (by == "*" or is_user(by)):
        bus.hub.destroy(room, by)


def _census(bus: Node, payload: dict[str, Any], mine: bool) -> None:
    ask = payload["ask"]
    if isinstance(ask, str) and ask.isalnum() and len(ask) <= 32:
        bus.answer_census(ask)


def _mail(bus: Node, payload: dict[str, Any], mine: bool) -> None:
    name = payload["name"]
    if is_user(name):
        bus.hub.mail(name)


EVENTS: dict[str, Callable[[Node, dict[str, Any], bool], None]] = {
    "kick": _kick,
    "wall": _wall,
    "room": _room_event,
    "destroy": _destroy,
    "mail": _mail,
    "census": _census,
}


# -- every byte from the engine is checked before it is used -----------------------------------


def field_text(raw: Mapping[bytes, bytes], key: bytes) -> str | None:
    """A field of a bus entry as text; None if missing or not UTF-8 (never repaired: a
    replacement character would be relayed as if someone had sent it)."""
    value = raw.get(key)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def count(value: str | None) -> int | None:
    """A count from the bus: digits only (Redis writes them so), else None."""
    if value is None or not value.isdigit() or not value.isascii() or len(value) > 18:
        return None
    return int(value)


def number(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def is_room(value: object) -> bool:
    return isinstance(value, str) and room_name(value) == value


def is_user(value: object) -> bool:
    return isinstance(value, str) and user_name(value) == value


def is_text(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_TEXT
        and "\n" not in value
        and "\r" not in value
        and not has_forbidden_chars(value)
    )


def ignored(kind: str | None) -> None:
    log.warning("ignored a malformed bus entry (%s)", (kind or "?")[:20])
