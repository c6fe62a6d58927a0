"""Forged lines: U+2028 and U+2029 turn one relayed line into two for a program that splits
lines the way ``str.splitlines()`` does.

``hi\\u2028MSG #lobby admin forged`` is one line to Sealroom's LF framing, but a bot that
reads the relay with ``splitlines()`` sees a second line, a message from ``admin``. The
validator refuses both separators (``ERR bad-input``), so they are never relayed; and our
own tools neither send them nor split lines on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from helpers import CHEAP_ARGON2, Server, write_config
from sealroom.cli.main import main
from sealroom.cli.render import safe
from sealroom.client import Client as LibraryClient
from sealroom.client import InvalidArgument, Message
from sealroom.client.events import parse_line
from sealroom.client.protocol import ClientProtocol
from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.protocol import decode_line
from sealroom.core.text import escape_for_log, has_forbidden_chars, password_problem

SEPARATORS = ["\u2028", "\u2029"]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_the_validator_refuses_line_and_paragraph_separators(separator: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_line(f"hi{separator}MSG #lobby admin forged".encode())
    assert refused.value.code is ErrorCode.BAD_INPUT
    assert has_forbidden_chars(separator)
    assert password_problem(f"a long{separator}password") is not None


# Every character str.splitlines() breaks at, mixed into arbitrary text.
BREAKS = st.sampled_from(["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", *SEPARATORS])


@given(st.text(st.one_of(st.characters(exclude_categories=["Cs"]), BREAKS), max_size=40))
@example("hi\u2028MSG #lobby admin forged")
@example("hi\u2029MSG #lobby admin forged")
def test_a_validated_line_never_splits(text: str) -> None:
    try:
        line = decode_line(text.encode("utf-8", "surrogatepass"))
    except ProtocolError:
        return
    assert len(f"x{line}x".splitlines()) == 1, repr(line)


@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_forged_line_is_never_relayed(server: Server, separator: str) -> None:
    alice = server.user("alice")
    bob = server.user("bob")
    alice.expect("JOIN #lobby bob")
    forged = f"hi{separator}MSG #lobby admin forged"
    for request in (forged, f"/say #lobby {forged}", f"/msg bob {forged}"):
        assert alice.request(request).startswith("ERR bad-input "), request
    assert alice.request("marker").startswith("OK say")
    assert bob.line() == "MSG #lobby alice marker"  # nothing forged arrived before it


@pytest.mark.parametrize("separator", SEPARATORS)
def test_logs_and_terminals_see_them_escaped(separator: str) -> None:
    escaped = f"\\u{ord(separator):04x}"
    assert escape_for_log(f"a{separator}b") == f"a{escaped}b"
    assert safe(f"a{separator}b") == f"a{escaped}b"
    assert len(safe(f"a{separator}MSG #lobby admin forged").splitlines()) == 1


@pytest.mark.parametrize("separator", SEPARATORS)
def test_the_client_library_neither_sends_nor_splits_them(separator: str) -> None:
    client = LibraryClient("127.0.0.1", 1)  # nothing is sent: no connection is made
    with pytest.raises(InvalidArgument):
        client.say(f"hi{separator}MSG #lobby admin forged")
    with pytest.raises(InvalidArgument):
        client.request(f"/msg bob hi{separator}x")

    # A server (an old or hostile one) that relays a separator: still one event.
    protocol = ClientProtocol()
    protocol.receive_data(b"HELLO sealroom 1 test hi\n")
    protocol.receive_data(f"MSG #lobby bob hi{separator}MSG #lobby admin forged\n".encode())
    assert protocol.next_event() is not None  # the greeting
    assert protocol.next_event() == Message(
        "#lobby", "bob", f"hi{separator}MSG #lobby admin forged"
    )
    assert protocol.next_event() is None
    # Fields are split at spaces, as the server writes them, not at any Unicode whitespace.
    reply = parse_line(f"OK login alice{separator}#forged")
    assert reply is not None
    assert getattr(reply, "fields", None) == [f"alice{separator}#forged"]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_user_import_does_not_split_lines_on_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], separator: str
) -> None:
    config = write_config(
        tmp_path, {"storage": {"database": "db/sealroom.db"}, "auth": {"argon2": CHEAP_ARGON2}}
    )
    assert main(["db", "init", "-c", str(config)]) == 0  # database commands never create one
    capsys.readouterr()
    source = tmp_path / "accounts.txt"
    # One line: its password holds a separator, which no password may; it is not two accounts.
    source.write_text(f"ann:a long password{separator}mallory:forged password\n", encoding="utf-8")
    assert main(["user", "import", str(source), "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "accounts.txt:1:" in err, err
    assert main(["user", "list", "--json", "-c", str(config)]) == 0
    assert "mallory" not in capsys.readouterr().out
