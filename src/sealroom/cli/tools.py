"""The client commands: ``sealroom send``, ``sealroom tail`` and ``sealroom chat``.

All three log in with the common options (``--host``, ``--port``, ``--user``, ``--ca``,
``--cert``/``--key``); the password comes from ``--password-file``, else the
``SEALROOM_PASSWORD`` environment variable, else a prompt on the terminal, never from a
command-line flag (other users can read a process's arguments). ``-c/--config``, which
every ``sealroom`` command takes, supplies only the default address: the server
configuration's first ``listen`` entry.

This module is the command line: the options, logging in, ``send`` and ``tail``. What is
shown comes from :mod:`sealroom.cli.render` (server text is untrusted and escaped there);
``chat``'s loop is :mod:`sealroom.cli.chat`, its input line :mod:`sealroom.cli.lineedit`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import getpass
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeAlias

from sealroom.cli.chat import run_chat
from sealroom.cli.render import as_json, long_clock, render, safe
from sealroom.client import (
    DEFAULT_PORT,
    Backoff,
    Bye,
    Client,
    Event,
    History,
    Message,
    PrivateMessage,
    Reconnected,
    ReconnectFailed,
    RequestError,
    SealroomError,
    Wall,
)
from sealroom.config import load_settings, parse_address
from sealroom.core.errors import ErrorCode, UserError
from sealroom.core.text import escape_for_log, room_name, user_name

Handler: TypeAlias = Callable[[argparse.Namespace], int]
# A string: argparse's private action class is not subscriptable at run time.
CommandAdder: TypeAlias = (
    "Callable[[argparse._SubParsersAction[argparse.ArgumentParser], str, Handler, str], "
    "argparse.ArgumentParser]"
)

DEFAULT_HOST: Final = "127.0.0.1"
PASSWORD_ENV: Final = "SEALROOM_PASSWORD"  # noqa: S105 -- a variable's name
USER_ENV: Final = "SEALROOM_USER"
RATE_LIMIT_RETRIES: Final = 10  # send waits out "rate-limited" this many times per message
MAX_RETRY_WAIT_S: Final = 30.0
MAX_PASSWORD_FILE_BYTES: Final = 8192


def add_client_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], command: CommandAdder
) -> None:
    """Register ``send``, ``tail`` and ``chat`` with ``command`` (cli's helper adds -c)."""
    send = command(subparsers, "send", cmd_send, "send a message to a room or a person")
    _connection_options(send)
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--room", metavar="#ROOM", help="the room to post to (# optional)")
    target.add_argument("--to", metavar="NAME", help="the person to send a private message")
    send.add_argument(
        "text",
        nargs="*",
        metavar="TEXT",
        help="the message (words joined by spaces); without it, each line of standard input",
    )

    tail = command(subparsers, "tail", cmd_tail, "print the messages of rooms as they arrive")
    _connection_options(tail)
    tail.add_argument("rooms", nargs="+", metavar="#ROOM", help="rooms to follow (# optional)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--history", type=_count, default=0, metavar="N", help="first print the last N of each room"
    )
    tail.add_argument(
        "--count", type=_count, metavar="N", help="exit after N new messages (default: never)"
    )

    chat = command(subparsers, "chat", cmd_chat, "an interactive terminal client")
    _connection_options(chat)
    chat.add_argument("rooms", nargs="*", metavar="#ROOM", help="rooms to join (# optional)")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--host", help=f"server name or address (default: {DEFAULT_HOST}, or -c's listen address)"
    )
    group.add_argument("--port", type=_port, help=f"server port (default: {DEFAULT_PORT})")
    group.add_argument("--user", metavar="NAME", help=f"account name (default: ${USER_ENV})")
    group.add_argument(
        "--ca", metavar="FILE", type=Path, help="CA certificate to trust (default: system store)"
    )
    group.add_argument("--cert", metavar="FILE", type=Path, help="client certificate (mutual TLS)")
    group.add_argument("--key", metavar="FILE", type=Path, help="its private key")
    group.add_argument(
        "--password-file",
        metavar="FILE",
        type=Path,
        help=f"read the password from FILE's first line (else ${PASSWORD_ENV}, else a prompt)",
    )


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


# -- logging in --------------------------------------------------------------------------------


def _endpoint(args: argparse.Namespace) -> tuple[str, int]:
    host: str | None = args.host
    port: int | None = args.port
    config = getattr(args, "config", None) or os.environ.get("SEALROOM_CONFIG") or None
    if (host is None or port is None) and config:
        listen_host, listen_port = parse_address(load_settings(Path(config)).listen[0])
        if host is None:
            # A wildcard listener is reached through the loopback address of its family.
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen_host, listen_host)  # noqa: S104
        if port is None:
            if listen_port == 0:
                raise UserError(f"{config} listens on port 0 (any free port): give --port")
            port = listen_port
    return host or DEFAULT_HOST, port or DEFAULT_PORT


def _user(args: argparse.Namespace) -> str:
    raw = args.user or os.environ.get(USER_ENV)
    if not raw:
        raise UserError(f"give --user NAME (or set {USER_ENV})")
    name = user_name(raw)
    if name is None:
        raise UserError(f"invalid user name {escape_for_log(raw)!r}: use [a-z0-9][a-z0-9_.-]")
    return name


def _password(args: argparse.Namespace, user: str, host: str) -> str:
    path: Path | None = args.password_file
    if path is not None:
        try:
            with path.open("rb") as handle:
                first = handle.read(MAX_PASSWORD_FILE_BYTES).split(b"\n", 1)[0]
        except OSError as error:
            raise UserError(f"cannot read password file {path}: {error.strerror}") from None
        password = first.decode("utf-8", errors="replace").removesuffix("\r")
        if not password:
            raise UserError(f"password file {path} starts with an empty line")
        return password
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    try:
        # getpass would fall back to reading stdin (with a warning) without a terminal.
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        raise UserError(
            f"no password: use --password-file FILE or ${PASSWORD_ENV} (no terminal to ask on)"
        ) from None
    try:
        password = getpass.getpass(f"Password for {user} at {host}: ")
    except EOFError:
        raise UserError("no password given") from None
    if not password:
        raise UserError("no password given")
    return password


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The library's errors as one-line user errors (server text escaped)."""
    try:
        yield
    except ReconnectFailed as error:
        raise UserError(f"lost the connection: {error}") from None
    except RequestError as error:
        raise UserError(f"the server refused: {error}") from None
    except SealroomError as error:
        raise UserError(escape_for_log(str(error))) from None


@contextlib.contextmanager
def _session(args: argparse.Namespace, *, reconnect: bool) -> Iterator[Client]:
    """A logged-in client for the common options; closed on the way out."""
    host, port = _endpoint(args)
    user = _user(args)
    if args.key is not None and args.cert is None:
        raise UserError("--key needs --cert")
    with _translated():
        client = Client(
            host,
            port,
            ca_file=args.ca,
            cert=args.cert,
            key=args.key,
            reconnect=Backoff() if reconnect else None,
        )
    password = _password(args, user, host)
    with _translated(), client:
        client.login(user, password)
        del password
        yield client


def _room_arg(raw: str) -> str:
    name = room_name(raw if raw.startswith("#") else f"#{raw}")
    if name is None:
        raise UserError(f"invalid room {escape_for_log(raw)!r}: use # then [a-z0-9_-]")
    return name


def _name_arg(raw: str) -> str:
    name = user_name(raw)
    if name is None:
        raise UserError(f"invalid user name {escape_for_log(raw)!r}: use [a-z0-9][a-z0-9_.-]")
    return name


# -- send --------------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    room = _room_arg(args.room) if args.room else None
    recipient = _name_arg(args.to) if args.to else None
    if args.text:
        text = " ".join(args.text)
        if not text.strip():
            raise UserError("nothing to send: the message is empty")
        texts: Iterator[str] = iter([text])
    else:
        texts = _stdin_lines()
    # Reading standard input may take long: then come back after a restart.
    with _session(args, reconnect=not args.text) as client:
        if room is not None and room not in client.rooms:
            client.join(room)
        for raw in texts:
            # The server refuses control characters; show them (\x1b) rather than fail.
            text = escape_for_log(raw)
            if not text.strip():
                continue
            if room is not None:
                _retry_rate_limited(functools.partial(client.say, text, room=room))
            else:
                assert recipient is not None  # one of --room/--to is required  # noqa: S101
                _retry_rate_limited(functools.partial(client.msg, recipient, text))
        client.quit()
    return 0


def _stdin_lines() -> Iterator[str]:
    for line in sys.stdin.buffer:
        yield line.decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r")


def _retry_rate_limited(action: Callable[[], int]) -> int:
    for _ in range(RATE_LIMIT_RETRIES):
        try:
            return action()
        except RequestError as error:
            if error.code is not ErrorCode.RATE_LIMITED:
                raise
            time.sleep(min(error.retry_after or 1.0, MAX_RETRY_WAIT_S))
    return action()


# -- tail --------------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    rooms = list(dict.fromkeys(_room_arg(raw) for raw in args.rooms))
    try:
        with _session(args, reconnect=True) as client:
            for room in rooms:
                client.join(room)
            for room in client.rooms:
                if room not in rooms:
                    client.part(room)  # the default room, unless asked for
            early: list[Event] = []
            shown = 0
            if args.history:
                early, shown = _print_history(client, rooms, args.history, args.json)
            events = itertools.chain(early, client.events())
            return _follow(client, events, rooms, args, shown)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one stops following
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from complaining
        # about the unflushed stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _follow(
    client: Client, events: Iterator[Event], rooms: list[str], args: argparse.Namespace, shown: int
) -> int:
    """Print messages until ``--count`` new ones were shown; UserError if the server ends it."""
    me = client.user
    ended = "the server closed the connection"
    done = args.count is not None and shown >= args.count
    for event in [] if done else events:
        if isinstance(event, Bye | Reconnected):
            # Gaps go to stderr, so stdout holds only messages.
            print(f"sealroom: {render(event, me, long_clock)}", file=sys.stderr)
            if isinstance(event, Bye):
                ended = f"the server closed the connection: {safe(event.reason)}"
            continue
        if not isinstance(event, Message | PrivateMessage | History | Wall):
            continue
        if isinstance(event, Message) and event.room not in rooms:
            continue
        print(as_json(event, me) if args.json else render(event, me, long_clock), flush=True)
        if isinstance(event, Message | PrivateMessage):
            shown += 1
            if args.count is not None and shown >= args.count:
                done = True
                break
    if not done:
        raise UserError(ended)
    client.quit()
    return 0


def _print_history(
    client: Client, rooms: list[str], count: int, as_jsonl: bool
) -> tuple[list[Event], int]:
    """Print each room's last ``count`` messages.

    Returns the events that came meanwhile, less the new messages the history already
    showed, and how many of those there were (they count towards ``--count``).
    """
    me = client.user
    shown: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for room in rooms:
        try:
            entries = client.history(room, count)
        except RequestError as error:
            if error.code is ErrorCode.BAD_COMMAND:
                print("sealroom: this server keeps no history (no /history)", file=sys.stderr)
                break
            raise
        for entry in entries:
            shown[entry.target, entry.sender, entry.text] += 1
            print(as_json(entry, me) if as_jsonl else render(entry, me, long_clock), flush=True)
    # A message that arrived before a history reply was stored before that query: it was
    # just printed from the history, so it is not printed again as a new one.
    early: list[Event] = []
    already = 0
    for event in client.take_queued_events():
        if isinstance(event, Message) and shown[event.room, event.sender, event.text]:
            shown[event.room, event.sender, event.text] -= 1
            already += 1
        else:
            early.append(event)
    return early, already


# -- chat --------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    rooms = [_room_arg(raw) for raw in args.rooms]
    stdin_fd = sys.stdin.fileno()
    interactive = os.isatty(stdin_fd) and sys.stdout.isatty()
    with _session(args, reconnect=True) as client:
        for room in rooms:
            client.join(room)
        return run_chat(client, stdin_fd, sys.stdout, interactive)
