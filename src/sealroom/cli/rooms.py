"""``sealroom room …``: rooms on the command line, for an admin when a room's owner is gone.

The commands change the database the running server uses, through the store, and nothing
else: the server notices (it polls the store's rooms version every half second) and applies
the change to its live sessions. A destroyed room is emptied (its members get ``DESTROYED``);
a ban takes the user's sessions out of the room at once (``BANNED``); operators, invitations,
bans lifted and topics hold from then on. Without a running server they hold from its next
start. Like ``user …``, these commands never create a database.

The rules are the server's, from the same places: names as :mod:`sealroom.core.text` reads
them, who may be banned as :mod:`sealroom.policy.rooms` says, a topic as ``/topic`` takes it.
What the command line may do beyond a room's owner is what a server admin may: everything
but destroying the default room.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TypeAlias

from sealroom.cli.commands import CommandTable, Handler
from sealroom.config import Settings
from sealroom.core.errors import UserError
from sealroom.core.model import Account, Mode, RoomRecord, RoomView
from sealroom.core.storage import Store
from sealroom.core.text import escape_for_log, has_forbidden_chars, room_name, user_name
from sealroom.policy import rooms
from sealroom.session.room_settings import TOPIC_MAX

__all__ = ["Opener", "add_room_commands"]

# Reads the configuration and opens its database (which must exist) for one command.
Opener: TypeAlias = Callable[[argparse.Namespace], tuple[Settings, Store]]
RoomHandler: TypeAlias = Callable[[argparse.Namespace, Settings, Store], int]

APPLIED = "the running server applies it within a second"


# -- arguments -----------------------------------------------------------------------------------


def _room(raw: str) -> str:
    """``tea`` means ``#tea``: an unquoted ``#`` starts a comment in the shell."""
    name = room_name(raw if raw.startswith("#") else f"#{raw}")
    if name is None:
        raise UserError(f"invalid room '{escape_for_log(raw)}': use # then [a-z0-9_-], at most 32")
    return name


def _user(raw: str) -> str:
    name = user_name(raw)
    if name is None:
        raise UserError(
            f"invalid user name '{escape_for_log(raw)}': use [a-z0-9][a-z0-9_.-], at most 32"
        )
    return name


def _existing_room(store: Store, raw: str) -> RoomRecord:
    name = _room(raw)
    record = store.get_room(name)
    if record is None:
        raise UserError(f"no room {name}")
    return record


def _existing_account(store: Store, raw: str) -> Account:
    """Roles are given to accounts, never to names: a role kept for a name without an
    account would pass to whoever is created with it next."""
    name = _user(raw)
    account = store.get_account(name)
    if account is None:
        raise UserError(f"no account {name}")
    return account


def _not_banned(record: RoomRecord, name: str) -> None:
    """A ban outweighs every role but owner and admin: giving one to a banned user would
    change nothing, so the command says so instead of reporting success."""
    if name in record.banned:
        raise UserError(
            f"{name} is banned from {record.name}: lift the ban first"
            f" (sealroom room unban {name} {record.name[1:]})"
        )


def _view(record: RoomRecord) -> RoomView:
    """The room as the policy reads it; who is in it now only the server knows, and no rule
    asked here depends on that."""
    return RoomView(
        owner=record.owner,
        mode=Mode(record.mode),
        operators=record.operators,
        invited=record.invited,
        banned=record.banned,
        members=frozenset(),
    )


def _topic(words: list[str]) -> str:
    topic = " ".join(words)
    if not topic.strip():
        raise UserError("an empty topic: give TEXT, or --clear")
    if has_forbidden_chars(topic):
        raise UserError("a topic may not hold control characters, line breaks or bidi overrides")
    if len(topic) > TOPIC_MAX:
        raise UserError(f"a topic is at most {TOPIC_MAX} characters, not {len(topic)}")
    return topic


# -- showing rooms -------------------------------------------------------------------------------


def _as_dict(record: RoomRecord) -> dict[str, object]:
    return {
        "name": record.name,
        "owner": record.owner,
        "mode": record.mode,
        "topic": record.topic,
        "created": record.created_at,
        "operators": sorted(record.operators),
        "invited": sorted(record.invited),
        "banned": sorted(record.banned),
    }


def cmd_room_list(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    records = store.list_rooms()
    if args.json:
        print(json.dumps([_as_dict(record) for record in records]))
        return 0
    print(f"{'ROOM':<33} {'MODE':<7} {'OWNER':<33} TOPIC")
    for record in records:
        line = f"{record.name:<33} {record.mode:<7} {record.owner or '-':<33} {record.topic}"
        print(escape_for_log(line.rstrip()))
    return 0


def cmd_room_show(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    if args.json:
        print(json.dumps(_as_dict(record)))
        return 0
    default = " (the default room)" if record.name == settings.rooms.default else ""
    for label, value in (
        ("room", record.name + default),
        ("owner", record.owner or "- (none)"),
        ("mode", record.mode),
        ("topic", record.topic or "-"),
        ("created", record.created_at),
        ("operators", " ".join(sorted(record.operators)) or "-"),
        ("invited", " ".join(sorted(record.invited)) or "-"),
        ("banned", " ".join(sorted(record.banned)) or "-"),
    ):
        print(escape_for_log(f"{label:<10} {value}"))
    return 0


# -- changing rooms ------------------------------------------------------------------------------


def cmd_room_destroy(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    name = _room(args.room)
    if name == settings.rooms.default:
        raise UserError(f"{name} is the default room (rooms.default): it cannot be destroyed")
    if not store.destroy_room(name):
        raise UserError(f"no room {name}")
    print(f"destroyed {name}, its settings and its history; {APPLIED}")
    return 0


def cmd_room_op(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    name = _existing_account(store, args.name).name
    _not_banned(record, name)
    if name in record.operators:
        print(f"{name} is already an operator of {record.name}")
        return 0
    store.set_role(record.name, name, "operator", True)
    print(f"{name} is now an operator of {record.name}; {APPLIED}")
    return 0


def cmd_room_deop(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    name = _existing_account(store, args.name).name
    if name == record.owner:
        raise UserError(f"{name} owns {record.name}, and the owner is always an operator")
    if name not in record.operators:
        print(f"{name} is not an operator of {record.name}")
        return 0
    store.set_role(record.name, name, "operator", False)
    print(f"{name} is no longer an operator of {record.name}; {APPLIED}")
    return 0


def cmd_room_ban(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    account = _existing_account(store, args.name)
    if not rooms.may_be_banned(_view(record), account.name, is_admin=account.is_admin):
        who = f"owns {record.name}" if account.name == record.owner else "is an admin"
        raise UserError(f"{account.name} {who}: a room's owner and admins cannot be banned")
    if account.name in record.banned:
        print(f"{account.name} is already banned from {record.name}")
        return 0
    store.set_role(record.name, account.name, "banned", True)
    print(f"banned {account.name} from {record.name}; {APPLIED}, taking their sessions out")
    return 0


def cmd_room_unban(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    name = _existing_account(store, args.name).name
    if name not in record.banned:
        print(f"{name} is not banned from {record.name}")
        return 0
    store.set_role(record.name, name, "banned", False)
    print(f"lifted the ban on {name} in {record.name} (it does not invite); {APPLIED}")
    return 0


def cmd_room_invite(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    account = _existing_account(store, args.name)
    _not_banned(record, account.name)
    if account.name in record.invited:
        print(f"{account.name} is already invited to {record.name}")
        return 0
    store.set_role(record.name, account.name, "invited", True)
    note = " (it is open: anyone may join)" if record.mode == Mode.OPEN.value else ""
    print(f"invited {account.name} to {record.name}{note}; {APPLIED}")
    return 0


def cmd_room_topic(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    record = _existing_room(store, args.room)
    if args.text and args.clear:
        raise UserError("give TEXT or --clear, not both")
    if not args.text and not args.clear:
        print(escape_for_log(record.topic))
        return 0
    topic = "" if args.clear else _topic(args.text)
    store.set_room(record.name, topic=topic)
    shown = f"set the topic of {record.name} to {topic}" if topic else "cleared the topic"
    print(escape_for_log(f"{shown}; {APPLIED} (members see it with /topic and /list)"))
    return 0


# -- the parser ----------------------------------------------------------------------------------


def _opened(opener: Opener, handler: RoomHandler) -> Handler:
    """``handler`` with the configuration read and the database open, then closed."""

    def run(args: argparse.Namespace) -> int:
        settings, store = opener(args)
        with store:
            return handler(args, settings, store)

    return run


def add_room_commands(table: CommandTable, opener: Opener) -> None:
    """Register ``room list|show|destroy|op|deop|ban|unban|invite|topic``."""
    group = table.group("room", "manage rooms in the database (the running server follows)")

    def command(
        name: str, handler: RoomHandler, text: str, *examples: tuple[str, str]
    ) -> argparse.ArgumentParser:
        return table.command(group, name, _opened(opener, handler), text, examples=examples)

    room_help = "the room (# optional: an unquoted # starts a comment in the shell)"
    command(
        "list",
        cmd_room_list,
        "every room: mode, owner and topic",
        ("sealroom room list", ""),
        ("sealroom room list --json", "with operators, invitations and bans, for scripts"),
    ).add_argument("--json", action="store_true", help="machine-readable output")
    show = command(
        "show",
        cmd_room_show,
        "one room: owner, mode, topic, operators, invitations and bans",
        ("sealroom room show tea", ""),
        ("sealroom room show '#tea' --json", "for scripts"),
    )
    show.add_argument("room", metavar="#ROOM", help=room_help)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    command(
        "destroy",
        cmd_room_destroy,
        "delete a room, its settings and its history; its members are taken out",
        ("sealroom room destroy tea", "not the default room"),
    ).add_argument("room", metavar="#ROOM", help=room_help)
    for name, handler, text, example in (
        ("op", cmd_room_op, "make NAME an operator of the room", "when the owner is gone"),
        ("deop", cmd_room_deop, "NAME is an operator of the room no more", ""),
        ("ban", cmd_room_ban, "take NAME's sessions out of the room and keep NAME out", ""),
        ("unban", cmd_room_unban, "lift a ban (it does not invite)", ""),
        ("invite", cmd_room_invite, "let NAME into the room while it is private", ""),
    ):
        sub = command(name, handler, text, (f"sealroom room {name} carol tea", example))
        sub.add_argument("name", metavar="NAME", help="an account")
        sub.add_argument("room", metavar="#ROOM", help=room_help)
    topic = command(
        "topic",
        cmd_room_topic,
        "show a room's topic, set it, or clear it",
        ("sealroom room topic tea", "show it"),
        ("sealroom room topic tea Tea, cake and civil words", "set it"),
        ("sealroom room topic tea --clear", ""),
    )
    topic.add_argument("room", metavar="#ROOM", help=room_help)
    topic.add_argument("text", nargs="*", metavar="TEXT", help="the new topic (words joined)")
    topic.add_argument("--clear", action="store_true", help="set an empty topic")
