"""The client commands as a user runs them: ``sealroom send`` and ``sealroom tail`` as
subprocesses, ``sealroom chat`` in a pseudo-terminal, and the echo bot example."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers import PASSWORD, Server, ServerFactory
from helpers import Client as RawClient
from sealroom.cli.lineedit import LineEditor
from sealroom.cli.render import as_json, render, render_listing, room_header, safe
from sealroom.client import (
    Banned,
    Bye,
    Destroyed,
    Event,
    History,
    Invited,
    Message,
    ModeChanged,
    PrivateMessage,
    RoomListing,
    TopicChanged,
    Wall,
)
from test_client import Peer, ScriptedServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def environment(password: str | None = PASSWORD) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALROOM_")}
    env["SEALROOM_CLIENT_CONFIG"] = "/nonexistent/client.yaml"  # not the tester's profiles
    if password is not None:
        env["SEALROOM_PASSWORD"] = password
    return env


def until(client: RawClient, prefix: str, timeout: float = 15) -> str:
    """The first line from ``client`` that starts with ``prefix``, skipping others."""
    deadline = time.monotonic() + timeout
    while True:
        line = client.line(max(deadline - time.monotonic(), 0.01))
        if line.startswith(prefix):
            return line


def common(server: Server | ScriptedServer, ca: Path, user: str = "alice") -> list[str]:
    return ["--port", str(server.port), "--ca", str(ca), "--user", user]


def sealroom(
    *argv: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealroom", *argv],
        input=stdin,
        env=environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        start_new_session=True,  # no controlling terminal: nothing can prompt
    )


# -- send ----------------------------------------------------------------------------------------


def test_send_posts_to_a_room_and_to_a_person(server: Server, tmp_path: Path) -> None:
    server.add_user("alice")
    bob = server.user("bob")
    bob.request("/join #tea")

    # -c: the address comes from the server's configuration (its port 0 needs --port).
    argv = ["-c", str(server.config), "--ca", str(server.ca_file), "--user", "alice"]
    refused = sealroom("send", *argv, "--room", "tea", "hello")
    assert refused.stderr.endswith("listens on port 0 (any free port): give --port\n")
    done = sealroom("send", *argv, "--port", str(server.port), "--room", "tea", "hello", "tea")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    until(bob, "MSG #tea alice hello tea")

    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    done = sealroom(
        "send",
        *common(server, server.ca_file),
        "--password-file",
        str(password_file),
        "--to",
        "bob",
        stdin="line one\n\nline \x1b[31mtwo\r\n/three\n",
        env=environment(password=None),
    )
    assert (done.returncode, done.stderr) == (0, "")
    until(bob, "DM alice line one")
    assert bob.expect("DM alice line \\x1b[31mtwo")  # control characters shown, not sent
    assert bob.expect("DM alice /three")


def test_send_to_a_room_is_quiet_for_its_members(server: Server) -> None:
    """Issue 13, report 8: each post showed the room JOIN, the message, PART."""
    server.add_user("alice")
    bob = server.user("bob")
    assert bob.request("/join #tea").startswith("OK join")
    assert bob.request("/part #lobby") == "OK part #lobby"  # only the room's view matters
    done = sealroom("send", *common(server, server.ca_file), "--room", "tea", "one", "post")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert bob.line() == "MSG #tea alice one post"
    assert bob.request("/ping after") == "OK ping after"  # nothing else came before it


def test_send_with_empty_input_is_a_user_error(server: Server) -> None:
    """Issue 13: `send` with nothing on standard input said nothing and exited 0."""
    server.add_user("alice")
    for stdin in ("", "\n  \n"):
        done = sealroom("send", *common(server, server.ca_file), "--room", "tea", stdin=stdin)
        assert (done.returncode, done.stderr) == (
            1,
            "sealroom: nothing to send: standard input held no text\n",
        )
    assert server.app.counters.logins_ok == 0  # found out before logging in


def test_send_says_when_it_waits_on_the_rate_limit(make_server: ServerFactory) -> None:
    """Issue 13: a send that waited on `rate-limited` looked hung."""
    server = make_server(rate={"messages": {"rate": 2, "burst": 2}})
    server.add_user("alice")
    bob = server.user("bob")
    assert bob.request("/join #tea").startswith("OK join")
    done = sealroom(
        "send", *common(server, server.ca_file), "--room", "tea", stdin="one\ntwo\nthree\n"
    )
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"sealroom: rate-limited by the server; waiting [\d.]+s \(try 1 of", done.stderr
    )
    texts = [until(bob, "MSG #tea alice").rsplit(" ", 1)[1] for _ in range(3)]
    assert texts == ["one", "two", "three"]


def test_an_unverified_certificate_suggests_ca(server: Server) -> None:
    """Issue 13, report 10: a certificate-verify failure did not suggest --ca."""
    server.add_user("alice")
    argv = ["--port", str(server.port), "--user", "alice", "--to", "bob", "hi"]
    done = sealroom("send", *argv)
    assert done.returncode == 1
    assert "cannot verify the certificate of 127.0.0.1:" in done.stderr
    assert "give its certificate with --ca FILE" in done.stderr
    assert done.stderr.count("\n") == 1


# -- client profiles ----------------------------------------------------------------------------


def write_profiles(folder: Path, text: str, mode: int = 0o600) -> dict[str, str]:
    """A profile file in ``folder``; the environment that points the tools at it."""
    path = folder / "client.yaml"
    path.write_text(text)
    path.chmod(mode)
    env = environment(password=None)
    env["SEALROOM_CLIENT_CONFIG"] = str(path)
    return env


def test_profiles_supply_the_connection_options(server: Server, tmp_path: Path) -> None:
    """Issue 13: `--ca … --user …` on every command; now a profile, flags still win."""
    server.add_user("alice")
    server.add_user("carol")
    bob = server.user("bob")
    (tmp_path / "alice.password").write_text(PASSWORD + "\n")
    shutil.copy(server.ca_file, tmp_path / "ca.pem")
    env = write_profiles(
        tmp_path,
        "default: local\n"
        "profiles:\n"
        f"  local: {{port: {server.port}, ca: ca.pem, user: alice,"
        " password_file: alice.password}\n"
        "  other: {port: 1, user: nobody}\n",
    )
    done = sealroom("send", "--to", "bob", "from the default profile", env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert until(bob, "DM alice") == "DM alice from the default profile"

    with_env = {**env, "SEALROOM_PASSWORD": PASSWORD}
    done = sealroom("send", "--user", "carol", "--to", "bob", "a flag wins", env=with_env)
    assert (done.returncode, done.stderr) == (0, "")
    assert until(bob, "DM carol") == "DM carol a flag wins"

    done = sealroom("send", "--profile", "other", "--to", "bob", "hi", env=with_env)
    assert done.returncode == 1
    assert "cannot connect to 127.0.0.1:1" in done.stderr

    done = sealroom("send", "--profile", "missing", "--to", "bob", "hi", env=env)
    assert done.stderr == (
        f"sealroom: no profile 'missing' in {tmp_path / 'client.yaml'} (it has: local, other)\n"
    )


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("default: a\nprofiles: {a: {port: 7443}}\n", 0o644, "chmod 600"),
        ("default: a\nprofiles: {a: {prot: 7443}}\n", 0o600, "profiles.a.prot: unknown key"),
        ("default: a\nprofiles: {a: {port: 70000}}\n", 0o600, "profiles.a.port: a port"),
        ("profiles: [\n", 0o600, "not valid YAML"),
    ],
)
def test_bad_profile_files_are_one_line(tmp_path: Path, text: str, mode: int, message: str) -> None:
    env = write_profiles(tmp_path, text, mode)
    done = sealroom("send", "--to", "bob", "hi", env=env)
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--to", "bob", "hi"], environment("wrong password"), "auth-failed: wrong name or"),
        (["--to", "nobody", "hi"], None, "the server refused: no-such-user: no account nobody"),
        (["--room", "#no room", "hi"], None, "invalid room"),
        (["--to", "bob", "  "], None, "nothing to send"),
        (["--to", "bob", "hi"], environment(password=None), "no password: use --password-file"),
        (["--to", "bob", "hi", "--ca", "/nonexistent"], None, "cannot read TLS CA /nonexistent"),
    ],
)
def test_send_refusals_are_one_line(
    server: Server, argv: list[str], env: dict[str, str] | None, message: str
) -> None:
    server.add_user("alice")
    server.add_user("bob")
    done = sealroom("send", *common(server, server.ca_file), *argv, env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("sealroom: ")
    assert message in done.stderr


def test_send_usage_errors(server: Server) -> None:
    assert sealroom("send", "--port", str(server.port), "hi").returncode == 2  # no --room/--to
    done = sealroom("send", "--port", str(server.port), "--room", "#x", "hi")
    assert (done.returncode, done.stderr) == (
        1,
        "sealroom: give --user NAME (or set SEALROOM_USER)\n",
    )
    unreachable = sealroom("send", "--port", "1", "--user", "alice", "--to", "bob", "hi")
    assert unreachable.returncode == 1
    assert "cannot connect to 127.0.0.1:1" in unreachable.stderr


# -- tail ----------------------------------------------------------------------------------------


def test_tail_prints_messages_as_they_arrive(server: Server) -> None:
    server.add_user("alice")
    bob = server.user("bob")
    bob.request("/join #tea")
    bob.request("/say #tea earlier")
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealroom",
            "tail",
            *common(server, server.ca_file),
            "--history",
            "5",
            "--count",
            "2",
            "#tea",
        ],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(bob, "JOIN #tea alice")  # tail is in the room
        bob.request("/say #lobby not for tail")
        bob.request("/say #tea first")
        bob.request("/msg alice just for you")
        out, err = tail.communicate(timeout=15)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    lines = out.splitlines()
    assert len(lines) == 3  # history first, then two new messages (--count)
    assert re.fullmatch(rf"{stamp} #tea <bob> earlier", lines[0])
    assert re.fullmatch(rf"{stamp} #tea <bob> first", lines[1])
    assert re.fullmatch(rf"{stamp} \*bob\* just for you", lines[2])
    assert err == ""


def test_tail_json(server: Server) -> None:
    server.add_user("alice")
    bob = server.user("bob")
    bob.request("/join #tea")
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealroom",
            "tail",
            *common(server, server.ca_file),
            "--json",
            "--count",
            "1",
            "tea",
        ],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(bob, "JOIN #tea alice")
        bob.request("/say #tea caf\u00e9 \u2603")
        out, err = tail.communicate(timeout=15)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    record = json.loads(out)
    assert out.isascii()
    assert {k: record[k] for k in ("type", "room", "from", "text")} == {
        "type": "message",
        "room": "#tea",
        "from": "bob",
        "text": "caf\u00e9 \u2603",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])


def test_tail_escapes_what_a_hostile_server_sends(tls_files: dict[str, Path]) -> None:
    def script(peer: Peer, number: int) -> None:
        peer.login(PASSWORD)
        peer.expect("/token")  # tail reconnects: it asks for a resume token
        peer.send("ERR bad-command unknown command /token; try /help")
        peer.expect("/join #tea")
        peer.send("OK join #tea")
        peer.expect("/part #lobby")
        peer.send("OK part #lobby")
        peer.send(b"MSG #tea evil \x1b]0;pwned\x07\x1b[2J\xe2\x80\xaeboom")
        peer.expect("/quit")
        peer.send("OK quit", "BYE quit")

    server = ScriptedServer(tls_files, script)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sealroom",
                "tail",
                *common(server, tls_files["ca"]),
                "--count",
                "1",
                "#tea",
            ],
            env=environment(),
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert b"\x1b" not in done.stdout
    assert b"\x07" not in done.stdout
    assert "\u202e".encode() not in done.stdout
    assert done.stdout.endswith(b"<evil> \\x1b]0;pwned\\x07\\x1b[2J\\u202eboom\n")


def test_tail_reports_the_end(server: Server) -> None:
    server.add_user("alice")
    server.add_user("root", admin=True)
    root = server.user("root")
    root.request("/join #tea")
    tail = subprocess.Popen(
        [sys.executable, "-m", "sealroom", "tail", *common(server, server.ca_file), "#tea"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(root, "PART #lobby alice")  # tail left the default room: it is following
        root.request("/kick alice go away")
        out, err = tail.communicate(timeout=15)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 1
    assert out == ""
    assert "-- disconnected: kicked by root: go away" in err.splitlines()[0]
    assert err.splitlines()[-1] == (
        "sealroom: the server closed the connection: kicked by root: go away"
    )


def test_tail_ends_when_no_followed_room_is_left(server: Server) -> None:
    """Banned from a room, or the room destroyed: said on stderr; with none left, tail ends
    rather than wait for messages that cannot come."""
    server.add_user("alice")
    root = server.user("root", admin=True)
    root.request("/join #tea")
    root.request("/join #den")
    tail = subprocess.Popen(
        [sys.executable, "-m", "sealroom", "tail", *common(server, server.ca_file), "tea", "den"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(root, "PART #lobby alice")  # tail left the default room: it is following
        root.request("/ban alice #tea noisy")
        root.request("/destroy #den")
        out, err = tail.communicate(timeout=15)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0].endswith("-- root banned you from #tea: noisy")
    assert lines[1].endswith("-- root destroyed #den; you are out of it")
    assert lines[2:] == ["sealroom: no room left to follow"]


# -- rendering -----------------------------------------------------------------------------------


def test_rendering_is_safe_for_terminals() -> None:
    hostile = "\x1b[31mred\x07\x9b\u202e\u2066 tab\there"
    assert safe(hostile) == "\\x1b[31mred\\x07\\x9b\\u202e\\u2066 tab here"
    for event in (
        Message("#a", "evil\x1b", hostile),
        PrivateMessage("evil", hostile),
        Wall("evil", hostile),
        Bye(hostile),
        History("#a", 1, datetime(2024, 1, 1, tzinfo=UTC), "evil", hostile),
        TopicChanged(hostile, hostile, hostile),
        ModeChanged(hostile, hostile, hostile),
        Invited(hostile, hostile),
        Banned(hostile, hostile, hostile),
        Destroyed(hostile, hostile),
    ):
        line = render(event, "me", lambda when: "12:00")
        assert line is not None
        assert not re.search("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", line)
        as_text = as_json(event, "me")
        assert as_text is None or as_text.isascii()
    for line in (
        room_header(hostile, hostile),
        render_listing(RoomListing(hostile, 1, hostile, hostile), 10),
    ):
        assert not re.search("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", line)


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        (TopicChanged("#tea", "alice", "scones"), "12:00 -- alice set the topic of #tea: scones"),
        (TopicChanged("#tea", "alice", ""), "12:00 -- alice cleared the topic of #tea"),
        (ModeChanged("#tea", "alice", "private"), "12:00 -- alice made #tea private"),
        (Invited("#tea", "alice"), "12:00 -- alice invited you to #tea"),
        (Banned("#tea", "alice", "spam"), "12:00 -- alice banned you from #tea: spam"),
        (Banned("#tea", "alice", ""), "12:00 -- alice banned you from #tea"),
        (Destroyed("#tea", "alice"), "12:00 -- alice destroyed #tea; you are out of it"),
    ],
)
def test_room_events_read_as_sentences(event: Event, shown: str) -> None:
    assert render(event, "me", lambda when: "12:00") == shown


def test_room_header_and_list_lines() -> None:
    assert room_header("#tea", "scones") == "== #tea: scones"
    assert room_header("#tea", "") == "== #tea (no topic)"
    assert room_header("#tea", None) == "== #tea"
    assert render_listing(RoomListing("#tea", 1, "open", "scones"), 6) == (
        "   #tea       1 user  open     scones"
    )
    assert render_listing(RoomListing("#lobby", 12, "private", ""), 6) == (
        "   #lobby   12 users  private"
    )


# -- the line editor -----------------------------------------------------------------------------


def test_line_editor_keys() -> None:
    editor = LineEditor()
    assert editor.feed("helo") == []
    assert editor.feed("\x1b[D") == []  # left
    editor.feed("l")
    assert (editor.text, editor.cursor) == ("hello", 4)
    editor.feed("\x01X\x05!")  # Ctrl-A, Ctrl-E
    assert editor.text == "Xhello!"
    editor.feed("\x17")  # Ctrl-W: the word before the cursor
    assert editor.text == ""
    editor.feed("one two\x1b")  # an escape sequence split across reads
    editor.feed("[")
    editor.feed("D\x7f")  # left, backspace
    assert (editor.text, editor.cursor) == ("one to", 5)
    editor.feed("\x01\x1b[3~")  # home, delete
    assert editor.text == "ne to"
    editor.feed("\x0b")  # Ctrl-K
    assert editor.text == ""
    assert editor.feed("\x04") == [None]  # Ctrl-D on an empty line: end of input
    editor.feed("x\x01\x04")  # Ctrl-D elsewhere deletes
    assert editor.text == ""
    assert editor.feed("a\x07b\tc\u202ed\r") == ["ab cd"]  # controls and bidi never enter


def test_line_editor_history() -> None:
    editor = LineEditor()
    assert editor.feed("first\rsecond\r") == ["first", "second"]
    editor.feed("draft")
    editor.feed("\x1b[A")
    assert editor.text == "second"
    editor.feed("\x10")  # Ctrl-P
    assert editor.text == "first"
    editor.feed("\x10")
    assert editor.text == "first"  # the oldest stays
    editor.feed("\x1b[B\x0e")  # down twice: back to the draft
    assert editor.text == "draft"
    assert editor.history == ["first", "second"]


def test_line_editor_scrolls_instead_of_wrapping() -> None:
    editor = LineEditor()
    editor.feed("\u6f22" * 30 + "abc")  # wide characters count twice
    line, column = editor.render("#a> ", 20)
    assert line.startswith("#a> ")
    assert line.endswith("abc")
    assert column <= 20
    editor.feed("\x01")
    line, column = editor.render("#a> ", 20)
    assert (line[4:6], column) == ("\u6f22\u6f22", 4)


# -- chat in a pseudo-terminal -------------------------------------------------------------------

# Runs in the child: opening the terminal as a session leader makes it the controlling
# terminal (so getpass can prompt on /dev/tty), then becomes `python -m sealroom`.
LAUNCHER = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "for n in (0, 1, 2): os.dup2(fd, n)\n"
    "os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'sealroom', *sys.argv[2:]])\n"
)


class Terminal:
    """A pseudo-terminal with ``sealroom`` running in it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.initial = termios.tcgetattr(slave)
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, os.ttyname(slave), *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.slave = slave  # kept open so the terminal's settings can be read after exit
        self.output = b""
        self.seen = 0

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, pattern: str, timeout: float = 10) -> str:
        """Output up to ``pattern`` (a regex), from where the last wait ended."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern.encode(), re.DOTALL)
        while True:
            found = regex.search(self.output, self.seen)
            if found:
                text = self.output[self.seen : found.end()].decode(errors="replace")
                self.seen = found.end()
                return text
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in {self.output[self.seen :]!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # EIO: the child is gone
                    raise AssertionError(f"exited; no {pattern!r} in {self.output!r}") from None

    def exit_status(self, timeout: float = 10) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def test_chat_in_a_terminal(server: Server, terminals: list[Terminal]) -> None:
    server.add_user("alice")
    bob = server.user("bob")
    chat = Terminal(["chat", *common(server, server.ca_file)], environment(password=None))
    terminals.append(chat)
    chat.wait_for(r"Password for alice at 127\.0\.0\.1: ")
    chat.type(PASSWORD + "\r")
    chat.wait_for(r"connected to localhost as alice.*#lobby> ")
    assert bob.expect("JOIN #lobby alice")

    bob.request("hello alice")
    chat.wait_for(r"\d\d:\d\d #lobby <bob> hello alice\r\n")

    chat.type("dra")  # half a line typed when a message arrives
    chat.wait_for(r"#lobby> dra")
    bob.request("are you there?")
    # The message is printed above the input line, which is drawn again, intact.
    chat.wait_for(r"\r\x1b\[K\d\d:\d\d #lobby <bob> are you there\?\r\n\r\x1b\[K#lobby> dra")
    chat.type("ft\r")
    assert bob.expect("MSG #lobby alice draft")
    chat.wait_for(r"#lobby <alice> draft")

    chat.type("/join #tea\r")
    chat.wait_for(r"#tea> ")
    chat.type("/msg bob psst\r")
    assert bob.expect("DM alice psst")
    bob.request("/msg alice pssst yourself")
    chat.wait_for(r"\*bob\* pssst yourself")
    chat.type("/quit\r")
    assert chat.exit_status() == 0
    assert bob.expect("PART #lobby alice")
    # The terminal is left as it was found: echo and line editing are back.
    assert termios.tcgetattr(chat.slave)[3] == chat.initial[3]


def test_chat_leaves_on_ctrl_d(server: Server, terminals: list[Terminal]) -> None:
    server.add_user("alice")
    chat = Terminal(["chat", *common(server, server.ca_file), "#tea"], environment())
    terminals.append(chat)
    chat.wait_for(r"#tea> ")
    chat.type("/who\r")
    chat.wait_for(r"-- #tea: alice")
    chat.type("/nonsense\r")
    chat.wait_for(r"!! bad-command: unknown command /nonsense")
    chat.type("\x04")
    assert chat.exit_status() == 0
    assert termios.tcgetattr(chat.slave)[3] == chat.initial[3]


def test_chat_shows_rooms_topics_and_room_events(server: Server, terminals: list[Terminal]) -> None:
    """The header of a joined room shows its topic; /list and /topic are chat's own; TOPIC,
    MODE, BANNED and DESTROYED read as sentences, and the prompt follows the current room."""
    server.add_user("bob")
    alice = server.user("alice")
    alice.request("/join #tea")
    alice.request("/topic #tea tea and cake")
    alice.request("/join #den")
    chat = Terminal(["chat", *common(server, server.ca_file, "bob"), "#tea"], environment())
    terminals.append(chat)
    chat.wait_for(r"== #tea: tea and cake\r\n.*#tea> ")
    until(alice, "JOIN #tea bob")

    alice.request("/topic #tea scones only")
    chat.wait_for(r"\d\d:\d\d -- alice set the topic of #tea: scones only\r\n")
    alice.request("/mode #tea private")
    chat.wait_for(r"\d\d:\d\d -- alice made #tea private\r\n")
    chat.type("/topic\r")
    chat.wait_for(r"-- #tea: scones only\r\n")
    chat.type("/topic #lobby\r")
    chat.wait_for(r"-- #lobby has no topic\r\n")
    chat.type("/list\r")
    chat.wait_for(
        r"-- 3 rooms to join:\r\n.*   #den  +1 user  open\r\n"
        r".*   #lobby +2 users  open\r\n.*   #tea  +2 users  private  scones only\r\n"
    )

    alice.request("/ban bob #tea enough")
    chat.wait_for(r"-- alice banned you from #tea: enough\r\n.*\(no room\)> ")
    chat.type("/join den\r")
    chat.wait_for(r"== #den \(no topic\)\r\n.*#den> ")
    alice.request("/destroy #den")
    chat.wait_for(r"-- alice destroyed #den; you are out of it\r\n.*\(no room\)> ")
    chat.type("/quit\r")
    assert chat.exit_status() == 0


# -- the example bot -----------------------------------------------------------------------------


def test_echo_bot(server: Server) -> None:
    server.add_user("echo")
    bob = server.user("bob")
    bot = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "echo_bot.py"),
            "echo",
            "--port",
            str(server.port),
            "--ca",
            str(server.ca_file),
        ],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([bot.stdout], [], [], 15)
        assert ready
        assert bot.stdout is not None
        assert bot.stdout.readline() == "echo is listening in #echo\n"
        bob.request("/join #echo")
        bob.request("marco")
        assert bob.expect("MSG #echo echo bob said: marco")
        bob.request("/msg echo polo")
        assert bob.expect("DM echo you said: polo")
    finally:
        bot.terminate()
        bot.communicate(timeout=10)
