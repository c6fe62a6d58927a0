"""Server text as people and programs see it: one line per event, escaped.

Text from the server is untrusted: everything shown on a terminal passes through
:func:`~sealroom.core.text.escape_for_log`, so a server that relays an escape sequence cannot
drive the terminal, and ``--json`` output escapes everything outside printable ASCII. The
commands print only what these functions return.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeAlias, assert_never

from sealroom.client import (
    Banned,
    Bye,
    Destroyed,
    Event,
    History,
    Info,
    Invited,
    Joined,
    Message,
    ModeChanged,
    Parted,
    PrivateMessage,
    Reconnected,
    RoomListing,
    TopicChanged,
    Wall,
)
from sealroom.core.text import escape_for_log

__all__ = [
    "as_json",
    "long_clock",
    "render",
    "render_listing",
    "room_header",
    "safe",
    "short_clock",
]


def safe(text: str) -> str:
    """Server text made harmless for a terminal: control characters, line separators and
    bidi overrides are shown escaped (``\\x1b``, ``\\u2028``), a TAB becomes a space."""
    return escape_for_log(text).replace("\t", " ")


def long_clock(when: datetime | None) -> str:
    """Local date and time (None: now), for ``tail``, whose output is read days later."""
    return (when or datetime.now(UTC)).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def short_clock(when: datetime | None) -> str:
    """Local time only (None: now), for ``chat``, which is read as it scrolls by."""
    return (when or datetime.now(UTC)).astimezone().strftime("%H:%M")


def render(event: Event, me: str | None, clock: Callable[[datetime | None], str]) -> str | None:
    """One line of text for a person, or None for events that are not shown this way."""
    match event:
        case Message(room, sender, text):
            return f"{clock(None)} {safe(room)} <{safe(sender)}> {safe(text)}"
        case PrivateMessage(sender, text):
            return f"{clock(None)} *{safe(sender)}* {safe(text)}"
        case History(target, _id, when, sender, text):
            if target.startswith("#"):
                return f"{clock(when)} {safe(target)} <{safe(sender)}> {safe(text)}"
            if sender == me:
                return f"{clock(when)} -> *{safe(target)}* {safe(text)}"
            return f"{clock(when)} *{safe(sender)}* {safe(text)}"
        case Wall(sender, text):
            return f"{clock(None)} [wall] <{safe(sender)}> {safe(text)}"
        case Joined(room, user):
            return f"{clock(None)} -- {safe(user)} joined {safe(room)}"
        case Parted(room, user):
            return f"{clock(None)} -- {safe(user)} left {safe(room)}"
        case Info(text):
            return f"{clock(None)} -- {safe(text)}"
        case TopicChanged() | ModeChanged() | Invited() | Banned() | Destroyed():
            return f"{clock(None)} -- {_room_change(event)}"
        case Bye(reason):
            return f"{clock(None)} -- disconnected: {safe(reason)}"
        case Reconnected(rooms):
            return f"{clock(None)} -- reconnected; in {' '.join(rooms) or 'no room'}"
    return None


RoomChange: TypeAlias = TopicChanged | ModeChanged | Invited | Banned | Destroyed


def _room_change(event: RoomChange) -> str:
    match event:
        case TopicChanged(room, by, topic):
            if not topic:
                return f"{safe(by)} cleared the topic of {safe(room)}"
            return f"{safe(by)} set the topic of {safe(room)}: {safe(topic)}"
        case ModeChanged(room, by, mode):
            return f"{safe(by)} made {safe(room)} {safe(mode)}"
        case Invited(room, by):
            return f"{safe(by)} invited you to {safe(room)}"
        case Banned(room, by, reason):
            why = f": {safe(reason)}" if reason.strip() else ""
            return f"{safe(by)} banned you from {safe(room)}{why}"
        case Destroyed(room, by):
            return f"{safe(by)} destroyed {safe(room)}; you are out of it"
    assert_never(event)


def room_header(room: str, topic: str | None) -> str:
    """The line that opens a room in ``chat``: its name and topic (None: not known)."""
    if topic is None:
        return f"== {safe(room)}"
    return f"== {safe(room)}: {safe(topic)}" if topic else f"== {safe(room)} (no topic)"


def render_listing(listing: RoomListing, width: int = 0) -> str:
    """One room of ``/list``, its name padded to ``width``."""
    members = f"{listing.members} {'user' if listing.members == 1 else 'users'}"
    line = f"   {safe(listing.room):<{width}}  {members:>9}  {safe(listing.mode):<7}  "
    return (line + safe(listing.topic)).rstrip()


def _utc(when: datetime | None) -> str:
    """ISO 8601 in UTC with a Z: a machine reading ``--json`` should not need our zone."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_json(event: Event, me: str | None) -> str | None:
    """One JSON object (ASCII only, so nothing in it can drive a terminal), or None."""
    record: dict[str, object]
    match event:
        case Message(room, sender, text):
            record = {"type": "message", "time": _utc(None), "room": room, "from": sender}
            record["text"] = text
        case PrivateMessage(sender, text):
            record = {"type": "private", "time": _utc(None), "from": sender, "to": me}
            record["text"] = text
        case History(target, message_id, when, sender, text):
            record = {"type": "history", "time": _utc(when), "id": message_id}
            record.update({"target": target, "from": sender, "text": text})
        case Wall(sender, text):
            record = {"type": "wall", "time": _utc(None), "from": sender, "text": text}
        case _:
            return None
    return json.dumps(record, ensure_ascii=True)
