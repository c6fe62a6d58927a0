"""The client commands: ``sealroom send``, ``sealroom tail`` and ``sealroom chat``.

All three log in with the common options (``--host``, ``--port``, ``--user``, ``--ca``,
``--cert``/``--key``), which a client profile (:mod:`sealroom.cli.profiles`, chosen with
``--profile``) can supply; flags override it. The password comes from ``--password-file``,
else the ``SEALROOM_PASSWORD`` environment variable, else the profile's ``password_file``,
else a prompt on the terminal, never from a command-line flag (other users can read a
process's arguments). ``-c/--config``, which every ``sealroom`` command takes, supplies only
the default address: the server configuration's first ``listen`` entry.

``send`` posts to a room without joining it, so the room sees the message and no JOIN or
PART around it; a wait on the server's rate limit is said on stderr.

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
from sealroom.cli.commands import CommandTable
from sealroom.cli.profiles import Profile, load_profile
from sealroom.cli.render import as_json, long_clock, render, safe
from sealroom.client import (
    DEFAULT_PORT,
    Backoff,
    Banned,
    Bye,
    Client,
    ConnectError,
    Destroyed,
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

DEFAULT_HOST: Final = "127.0.0.1"
PASSWORD_ENV: Final = "SEALROOM_PASSWORD"  # noqa: S105 -- a variable's name
USER_ENV: Final = "SEALROOM_USER"
RATE_LIMIT_RETRIES: Final = 10  # send waits out "rate-limited" this many times per message
MAX_RETRY_WAIT_S: Final = 30.0
MAX_PASSWORD_FILE_BYTES: Final = 8192


def add_client_commands(table: CommandTable) -> None:
    """Register ``send``, ``tail`` and ``chat`` in the command table (which adds -c)."""
    send = table.command(
        table.commands,
        "send",
        cmd_send,
        "send a message to a room or a person",
        examples=(
            ("sealroom send --profile work --room builds 'v1.4.2 is live'", ""),
            ("make 2>&1 | sealroom send --room builds", "each line of input, a message"),
            (
                "sealroom send --ca certs/ca.crt --user deploy --to alice 'done'",
                "no profile",
            ),
        ),
    )
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

    tail = table.command(
        table.commands,
        "tail",
        cmd_tail,
        "print the messages of rooms as they arrive",
        examples=(
            ("sealroom tail --history 20 tea builds", "the last 20 of each, then new ones"),
            ("sealroom tail --json --count 1 alerts", "one message as JSON, then exit"),
        ),
    )
    _connection_options(tail)
    tail.add_argument("rooms", nargs="+", metavar="#ROOM", help="rooms to follow (# optional)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--history", type=_count, default=0, metavar="N", help="first print the last N of each room"
    )
    tail.add_argument(
        "--count", type=_count, metavar="N", help="exit after N new messages (default: never)"
    )

    chat = table.command(
        table.commands,
        "chat",
        cmd_chat,
        "an interactive terminal client",
        examples=(
            ("sealroom chat '#tea'", "with the default profile"),
            ("sealroom chat --host chat.example.org --user alice tea", ""),
        ),
    )
    _connection_options(chat)
    chat.add_argument("rooms", nargs="*", metavar="#ROOM", help="rooms to join (# optional)")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "connection", "flags override the profile (see 'Client profiles' in docs/clients.md)"
    )
    group.add_argument(
        "--profile",
        metavar="NAME",
        help="a profile of ~/.config/sealroom/client.yaml (default: $SEALROOM_PROFILE, "
        "else the file's default)",
    )
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


def _with_profile(args: argparse.Namespace) -> Profile:
    """Fill the connection options the command line left out from the chosen profile."""
    profile = load_profile(args.profile)
    for option in ("host", "port", "ca", "cert", "key"):
        if getattr(args, option) is None:
            setattr(args, option, getattr(profile, option))
    # The environment names this run's account and password: it beats the profile.
    if args.user is None and not os.environ.get(USER_ENV):
        args.user = profile.user
    if args.password_file is None and not os.environ.get(PASSWORD_ENV):
        args.password_file = profile.password_file
    return profile


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
def _translated(ca_given: bool = True) -> Iterator[None]:
    """The library's errors as one-line user errors (server text escaped)."""
    try:
        yield
    except ConnectError as error:
        hint = ""
        if not ca_given and "cannot verify the certificate" in str(error):
            hint = (
                "; if the server uses a private CA (sealroom certs init), give its certificate"
                " with --ca FILE (or ca: in a profile)"
            )
        raise UserError(escape_for_log(str(error)) + hint) from None
    except ReconnectFailed as error:
        raise UserError(f"lost the connection: {error}") from None
    except RequestError as error:
        raise UserError(f"the server refused: {error}") from None
    except SealroomError as error:
        raise UserError(escape_for_log(str(error))) from None


@contextlib.contextmanager
def _session(args: argparse.Namespace, *, reconnect: bool) -> Iterator[Client]:
    """A logged-in client for the common options; closed on the way out."""
    _with_profile(args)
    host, port = _endpoint(args)
    user = _user(args)
    if args.key is not None and args.cert is None:
        raise UserError("--key needs --cert")
    ca_given = args.ca is not None
    with _translated(ca_given):
        client = Client(
            host,
            port,
            ca_file=args.ca,
            cert=args.cert,
            key=args.key,
            reconnect=Backoff() if reconnect else None,
        )
    password = _password(args, user, host)
    with _translated(ca_given), client:
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
        # Nothing to say is a mistake worth a word, found before logging in.
        lines = (line for line in _stdin_lines() if line.strip())
        first = next(lines, None)
        if first is None:
            raise UserError("nothing to send: standard input held no text")
        texts = itertools.chain([first], lines)
    # Reading standard input may take long: then come back after a restart.
    with _session(args, reconnect=not args.text) as client:
        for raw in texts:
            # The server refuses control characters; show them (\x1b) rather than fail.
            text = escape_for_log(raw)
            if room is not None:
                _retry_rate_limited(functools.partial(_post, client, room, text))
            else:
                assert recipient is not None  # one of --room/--to is required  # noqa: S101
                _retry_rate_limited(functools.partial(client.msg, recipient, text))
        client.quit()
    return 0


def _post(client: Client, room: str, text: str) -> int:
    """Post without joining, so the room sees no JOIN and PART; join only for a server
    that wants members to post (older Sealrooms answer ``not-in-room``)."""
    try:
        return client.say(text, room=room)
    except RequestError as error:
        if error.code is not ErrorCode.NOT_IN_ROOM or room in client.rooms:
            raise
    client.join(room)
    return client.say(text, room=room)


def _stdin_lines() -> Iterator[str]:
    for line in sys.stdin.buffer:
        yield line.decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r")


def _retry_rate_limited(action: Callable[[], int]) -> int:
    for attempt in range(1, RATE_LIMIT_RETRIES + 1):
        try:
            return action()
        except RequestError as error:
            if error.code is not ErrorCode.RATE_LIMITED:
                raise
            wait = min(error.retry_after or 1.0, MAX_RETRY_WAIT_S)
            print(
                f"sealroom: rate-limited by the server; waiting {wait:g}s "
                f"(try {attempt} of {RATE_LIMIT_RETRIES})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
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
        if isinstance(event, Banned | Destroyed) and event.room in rooms:
            # Out of a followed room for good: said on stderr; with none left, tail ends.
            print(f"sealroom: {render(event, me, long_clock)}", file=sys.stderr)
            if not set(rooms) & set(client.rooms):
                ended = "no room left to follow"
                break
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
