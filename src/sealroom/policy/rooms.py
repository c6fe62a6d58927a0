"""Who may do what in a room: every rule of the protocol's rooms section, in one place.

The session asks; this module answers from a :class:`RoomView` (the room's settings as the
hub holds them) and the asker's name and server role. No I/O, no locks: the caller holds the
hub's lock or a consistent copy. The rules, by role:

- the **owner** (the room's creator) and **server admins** may do everything, in every room;
- **operators** (the owner, those made operators with ``/op``, and admins) may set the topic
  and the mode, invite, ban and unban;
- only the owner or an admin may ``/op``, ``/deop`` and ``/destroy``;
- anyone not banned may join an **open** room; a **private** room only its operators and
  invited users;
- ``/history`` is for members (users with a session in the room); ``/who`` and ``/topic``
  for anyone in an open room, and in a private room for members and those who may join;
- a **banned** user may do nothing in the room; the owner and admins cannot be banned.
"""

from __future__ import annotations

import enum

from sealroom.core.model import Mode, RoomView

__all__ = [
    "Mode",
    "Role",
    "RoomView",
    "may_be_banned",
    "may_join",
    "may_manage",
    "may_moderate",
    "may_read_history",
    "may_see",
    "role_of",
]


class Role(enum.Enum):
    """The strongest role a user holds in a room, as the rules read it."""

    OWNER = "owner"
    ADMIN = "admin"
    OPERATOR = "operator"
    INVITED = "invited"
    MEMBER = "member"  # has a session in the room, holds none of the roles above
    BANNED = "banned"
    STRANGER = "stranger"


def role_of(room: RoomView, name: str, *, is_admin: bool) -> Role:
    if name == room.owner:
        return Role.OWNER
    if is_admin:
        return Role.ADMIN
    if name in room.banned:
        return Role.BANNED
    if name in room.operators:
        return Role.OPERATOR
    if name in room.invited:
        return Role.INVITED
    if name in room.members:
        return Role.MEMBER
    return Role.STRANGER


_OPERATORS = frozenset({Role.OWNER, Role.ADMIN, Role.OPERATOR})
_MANAGERS = frozenset({Role.OWNER, Role.ADMIN})


def may_join(room: RoomView, role: Role) -> bool:
    if role is Role.BANNED:
        return False
    if room.mode is Mode.OPEN:
        return True
    return role in _OPERATORS or role is Role.INVITED


def may_read_history(room: RoomView, name: str, role: Role) -> bool:
    """Members only: a user with a session in the room (and not banned)."""
    return role is not Role.BANNED and name in room.members


def may_see(room: RoomView, name: str, role: Role) -> bool:
    """``/who`` and ``/topic`` without TEXT."""
    if role is Role.BANNED:
        return False
    return room.mode is Mode.OPEN or name in room.members or may_join(room, role)


def may_moderate(role: Role) -> bool:
    """Set the topic or the mode, invite, ban, unban."""
    return role in _OPERATORS


def may_manage(role: Role) -> bool:
    """``/op``, ``/deop``, ``/destroy``."""
    return role in _MANAGERS


def may_be_banned(room: RoomView, name: str, *, is_admin: bool) -> bool:
    return name != room.owner and not is_admin
