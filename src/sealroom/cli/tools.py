"""The client commands: ``sealroom send``, ``sealroom tail`` and ``sealroom chat``.

All three log in with the common options (``--host``, ``--port``, ``--user``, ``--ca``,
``--cert``/``--key``); the password comes from ``--password-file``, else the
``SEALROOM_PASSWORD`` environment variable, else a prompt on the terminal, never from a
command-line flag (other users can read a process's arguments). ``-c/--config``, which
every ``sealroom`` command takes, supplies only the default address: the server
configuration's first ``listen`` entry.

What is shown comes from :mod:`sealroom.cli.render`: server text is untrusted and escaped
there.

``chat``'s input line, and why chat edits it itself, is :mod:`sealroom.cli.lineedit`.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import functools
import getpass
import itertools
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO, TypeAlias

from sealroom.cli.lineedit import MAX_INPUT_LINE_CHARS, LineEditor, Screen, keys_one_by_one
from sealroom.cli.render import as_json, long_clock, render, safe, short_clock
from sealroom.client import (
    DEFAULT_PORT,
    Backoff,
    Bye,
    Client,
    ConnectionClosed,
    Event,
    History,
    InvalidArgument,
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
CHAT_TICK_S: Final = 1.0  # chat wakes at least this often (keepalive, resize)
CHAT_EVENTS_PER_TICK: Final = 256  # then reads the keyboard, so a flood cannot freeze input


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


# -- chat: the loop ---------------------------------------------------------------------------


CHAT_HELP: Final = (
    "/join #ROOM           join a room; it becomes current",
    "/part [#ROOM]         leave a room (default: current)",
    "/msg NAME TEXT        private message",
    "/who [#ROOM]          who is in a room",
    "/rooms                rooms you are in",
    "/history [TARGET] [N] recent messages of a room or conversation",
    "/quit [REASON]        leave (Ctrl-D on an empty line too)",
    "//TEXT                a message that starts with /",
    "other /commands (/ping, /kick, /wall) go to the server as typed",
)


class _Chat:
    def __init__(self, client: Client, stdin_fd: int, out: TextIO, interactive: bool) -> None:
        self.client = client
        self.stdin_fd = stdin_fd
        self.editor = LineEditor()
        self.screen = Screen(out, self.editor, interactive)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.status: int | None = None  # the exit status, once the chat is over

    def run(self) -> int:
        client = self.client
        self.screen.show(
            f"-- connected to {safe(client.server_name or client.host)} as {client.user}; "
            "/help lists commands, /quit leaves"
        )
        self._update_prompt()
        while self.status is None:
            self._show_events()
            if self.status is not None:
                break
            wait = 0.0 if client.has_pending() else CHAT_TICK_S
            sources = [self.stdin_fd] + ([client.fileno()] if client.connected else [])
            ready, _, _ = select.select(sources, [], [], wait)
            if self.stdin_fd in ready:
                self._read_keys()
        self.screen.clear()
        return self.status

    def _show_events(self) -> None:
        for _ in range(CHAT_EVENTS_PER_TICK):
            try:
                event = self.client.next_event(0)
            except ConnectionClosed as error:
                self.screen.show(f"-- {safe(str(error))}")
                self.status = 1
                return
            if event is None:
                return
            line = render(event, self.client.user, short_clock)
            if line is not None:
                self.screen.show(line)
            if isinstance(event, Reconnected | Bye):
                self._update_prompt()

    def _read_keys(self) -> None:
        data = os.read(self.stdin_fd, 4096)
        if not data:
            self._quit(None)
            return
        for line in self.editor.feed(self.decoder.decode(data)):
            if line is None:
                self._quit(None)
            else:
                self._submit(line)
            if self.status is not None:
                return
        self.screen.redraw()

    def _update_prompt(self) -> None:
        room = self.client.current_room
        self.screen.prompt = f"{safe(room)}> " if room else "(no room)> "
        self.screen.redraw()

    def _submit(self, line: str) -> None:
        if not line.strip():
            return
        try:
            if line.startswith("/") and not line.startswith("//"):
                self._command(line)
            else:
                self._say(line[1:] if line.startswith("//") else line)
        except RequestError as error:
            self.screen.show(f"!! {error.code}: {safe(error.text)}")
        except ConnectionClosed as error:
            self.screen.show(f"!! not sent: {safe(str(error))}")
        except SealroomError as error:
            self.screen.show(f"!! {safe(str(error))}")
        self._update_prompt()

    def _say(self, text: str) -> None:
        room = self.client.current_room
        if room is None:
            self.screen.show("!! you are in no room: /join #ROOM")
            return
        self.client.say(text, room=room)
        self.screen.show(f"{short_clock(None)} {room} <{self.client.user}> {safe(text)}")

    def _command(self, line: str) -> None:
        verb, _, rest = line[1:].partition(" ")
        verb, args = verb.lower(), rest.split()
        if verb in ("login", "resume", "passwd", "token"):
            self.screen.show(f"!! /{verb} is not available in chat")
            return
        local = CHAT_COMMANDS.get(verb)
        if local is None:
            self._pass_through(line)
        elif local.min_args <= len(args) <= local.max_args:
            local.run(self, rest, args)
        else:
            self.screen.show(f"!! usage: {local.usage}")

    def _pass_through(self, line: str) -> None:
        reply = self.client.request(line)
        for data in reply.data:
            self.screen.show(f"-- {safe(data)}")
        self.screen.show(f"-- OK {safe(reply.verb)} {safe(reply.args)}".rstrip())

    def _help(self, rest: str, args: list[str]) -> None:
        for text in CHAT_HELP:
            self.screen.show(f"-- {text}")

    def _join(self, rest: str, args: list[str]) -> None:
        self.client.join(_chat_room(args[0]))

    def _part(self, rest: str, args: list[str]) -> None:
        left = self.client.part(_chat_room(args[0]) if args else None)
        self.screen.show(f"-- you left {left}")

    def _msg(self, rest: str, args: list[str]) -> None:
        name, _, text = rest.lstrip(" ").partition(" ")
        self.client.msg(name, text)
        self.screen.show(f"{short_clock(None)} -> *{safe(name.lower())}* {safe(text)}")

    def _who(self, rest: str, args: list[str]) -> None:
        room = _chat_room(args[0]) if args else self.client.current_room
        names = self.client.who(room)
        self.screen.show(f"-- {room}: {' '.join(names)}")

    def _rooms(self, rest: str, args: list[str]) -> None:
        self.screen.show(f"-- your rooms: {' '.join(self.client.list_rooms()) or 'none'}")

    def _leave(self, rest: str, args: list[str]) -> None:
        self._quit(rest.strip() or None)

    def _history(self, rest: str, args: list[str]) -> None:
        count = int(args[-1]) if args and args[-1].isascii() and args[-1].isdigit() else None
        targets = args[:-1] if count is not None else args
        target = targets[0] if targets else self.client.current_room
        if target is None:
            raise InvalidArgument("which room? /history #ROOM [N]")
        for entry in self.client.history(target, count):
            line = render(entry, self.client.user, short_clock)
            if line is not None:
                self.screen.show(line)

    def _quit(self, reason: str | None) -> None:
        with contextlib.suppress(SealroomError):
            self.client.quit(reason)
        self.status = 0


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """One row of chat's own command table; other /commands go to the server as typed."""

    usage: str
    run: Callable[[_Chat, str, list[str]], None]
    min_args: int = 0
    max_args: int = 0


CHAT_COMMANDS: Final = {
    "help": ChatCommand("/help", _Chat._help, 0, 99),
    "join": ChatCommand("/join #ROOM", _Chat._join, 1, 1),
    "part": ChatCommand("/part [#ROOM]", _Chat._part, 0, 1),
    "msg": ChatCommand("/msg NAME TEXT", _Chat._msg, 2, MAX_INPUT_LINE_CHARS),
    "who": ChatCommand("/who [#ROOM]", _Chat._who, 0, 1),
    "rooms": ChatCommand("/rooms", _Chat._rooms),
    "history": ChatCommand("/history [#ROOM|NAME] [N]", _Chat._history, 0, 2),
    "quit": ChatCommand("/quit [REASON]", _Chat._leave, 0, MAX_INPUT_LINE_CHARS),
}


def _chat_room(raw: str) -> str:
    return raw if raw.startswith("#") else f"#{raw}"


def cmd_chat(args: argparse.Namespace) -> int:
    rooms = [_room_arg(raw) for raw in args.rooms]
    stdin_fd = sys.stdin.fileno()
    interactive = os.isatty(stdin_fd) and sys.stdout.isatty()
    with _session(args, reconnect=True) as client:
        for room in rooms:
            client.join(room)
        chat = _Chat(client, stdin_fd, sys.stdout, interactive)
        try:
            with keys_one_by_one(stdin_fd) if interactive else contextlib.nullcontext():
                return chat.run()
        except KeyboardInterrupt:
            chat.screen.clear()
            client.close()
            return 0
