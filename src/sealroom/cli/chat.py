"""The ``chat`` loop: one thread waits on the keyboard and the connection together.

It drains the client's events without waiting, then ``select``\\ s on standard input and the
client's socket (after :meth:`~sealroom.client.Client.has_pending`, since lines already
read are invisible to ``select``). It wakes at least every :data:`CHAT_TICK_S` for the
client's keepalive, and shows at most :data:`CHAT_EVENTS_PER_TICK` events before it reads
the keyboard again, so a flood of messages cannot freeze the input line.

Chat's own commands are a table (:data:`CHAT_COMMANDS`); any other ``/command`` goes to
the server as typed and its reply is shown.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO

from sealroom.cli.lineedit import MAX_INPUT_LINE_CHARS, LineEditor, Screen, keys_one_by_one
from sealroom.cli.render import render, render_listing, room_header, safe, short_clock
from sealroom.client import (
    Banned,
    Bye,
    Client,
    ConnectionClosed,
    Destroyed,
    InvalidArgument,
    Reconnected,
    RequestError,
    SealroomError,
)

__all__ = ["CHAT_COMMANDS", "CHAT_HELP", "Chat", "ChatCommand", "run_chat"]

CHAT_TICK_S: Final = 1.0  # chat wakes at least this often (keepalive, resize)
CHAT_EVENTS_PER_TICK: Final = 256  # then reads the keyboard, so a flood cannot freeze input

CHAT_HELP: Final = (
    "/join #ROOM           join a room; it becomes current",
    "/part [#ROOM]         leave a room (default: current)",
    "/msg NAME TEXT        private message",
    "/who [#ROOM]          who is in a room",
    "/rooms                rooms you are in",
    "/list                 rooms you may join, with their topics",
    "/topic [#ROOM] [TEXT] a room's topic (default: current); operators set it",
    "/history [TARGET] [N] recent messages of a room or conversation",
    "/quit [REASON]        leave (Ctrl-D on an empty line too)",
    "//TEXT                a message that starts with /",
    "other /commands go to the server as typed: /mode, /invite, /ban, /unban, /op, /deop,",
    "  /destroy for a room's operators and owner; /ping; /kick and /wall for admins",
)


class Chat:
    """One chat: the client, the input line and the screen they share.

    The keyboard is read as bytes and decoded incrementally, because one read may end in
    the middle of a multi-byte character.
    """

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
        self._show_header()
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
            if isinstance(event, Reconnected | Bye | Banned | Destroyed):
                self._update_prompt()  # the current room may be gone

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

    def _show_header(self) -> None:
        """The current room and its topic; ``OK login`` carries no topic, so it is asked for
        when the client has not seen it (an older server without /topic: no topic shown)."""
        room = self.client.current_room
        if room is None:
            return
        topic = self.client.topics.get(room)
        if topic is None:
            with contextlib.suppress(RequestError):
                topic = self.client.topic(room)
        self.screen.show(room_header(room, topic))

    def _join(self, rest: str, args: list[str]) -> None:
        self.client.join(_chat_room(args[0]))
        self._show_header()

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

    def _list(self, rest: str, args: list[str]) -> None:
        rooms = self.client.joinable_rooms()
        self.screen.show(f"-- {len(rooms)} {'room' if len(rooms) == 1 else 'rooms'} to join:")
        width = max((len(safe(listing.room)) for listing in rooms), default=0)
        for listing in rooms:
            self.screen.show(render_listing(listing, width))

    def _topic(self, rest: str, args: list[str]) -> None:
        """``/topic [#ROOM] [TEXT]``: a first word that starts with # names the room."""
        words = rest.strip(" ")
        if args and args[0].startswith("#"):
            room, _, text = words.partition(" ")
        else:
            room, text = self.client.current_room or "", words
        if not room:
            raise InvalidArgument("which room? /topic #ROOM [TEXT]")
        if text.strip():
            self.client.topic(room, text)  # its TOPIC event, shown next, says it was set
            return
        topic = self.client.topic(room)
        shown = f"{safe(room)}: {safe(topic)}" if topic else f"{safe(room)} has no topic"
        self.screen.show(f"-- {shown}")

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
    run: Callable[[Chat, str, list[str]], None]
    min_args: int = 0
    max_args: int = 0


CHAT_COMMANDS: Final = {
    "help": ChatCommand("/help", Chat._help, 0, 99),
    "join": ChatCommand("/join #ROOM", Chat._join, 1, 1),
    "part": ChatCommand("/part [#ROOM]", Chat._part, 0, 1),
    "msg": ChatCommand("/msg NAME TEXT", Chat._msg, 2, MAX_INPUT_LINE_CHARS),
    "who": ChatCommand("/who [#ROOM]", Chat._who, 0, 1),
    "rooms": ChatCommand("/rooms", Chat._rooms),
    "list": ChatCommand("/list", Chat._list),
    "topic": ChatCommand("/topic [#ROOM] [TEXT]", Chat._topic, 0, MAX_INPUT_LINE_CHARS),
    "history": ChatCommand("/history [#ROOM|NAME] [N]", Chat._history, 0, 2),
    "quit": ChatCommand("/quit [REASON]", Chat._leave, 0, MAX_INPUT_LINE_CHARS),
}


def _chat_room(raw: str) -> str:
    """``tea`` means ``#tea``, as on the command line; the client checks the name itself."""
    return raw if raw.startswith("#") else f"#{raw}"


def run_chat(client: Client, stdin_fd: int, out: TextIO, interactive: bool) -> int:
    """Chat on ``client`` until the user leaves or the connection is gone; the exit status.

    On a terminal (``interactive``) keys are read one by one, and the terminal's mode is
    restored however the chat ends. Ctrl-C leaves at once, without ``/quit``.
    """
    chat = Chat(client, stdin_fd, out, interactive)
    try:
        with keys_one_by_one(stdin_fd) if interactive else contextlib.nullcontext():
            return chat.run()
    except KeyboardInterrupt:
        chat.screen.clear()
        client.close()
        return 0
