"""Hostile names: homoglyphs, mixed scripts, fullwidth forms, case-mapping tricks.

Names are ASCII by design (``[a-z0-9][a-z0-9_.-]{0,31}`` for users, ``#`` then
``[a-z0-9][a-z0-9_-]{0,31}`` for rooms), folded to lower case, never Unicode-normalised: a name
with anything else in it is refused, so nobody can look like somebody else. The trap is
``str.lower()``, which maps some non-ASCII letters onto ASCII ones (KELVIN SIGN -> ``k``),
so the ASCII check has to come before the folding, on the raw text.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import CHEAP_ARGON2, PASSWORD, ServerFactory, write_config
from sealroom.cli.main import main
from sealroom.core.text import ROOM_NAME, USER_NAME, room_name, user_name

# Each looks like (or folds into) an ASCII name an attacker would like to be.
HOSTILE_NAMES = {
    "cyrillic a": "\u0430lice",
    "cyrillic o": "b\u043eb",
    "greek omicron": "b\u03bfb",
    "mixed script": "al\u0456ce",  # Ukrainian i among Latin letters
    "fullwidth": "\uff41\uff4c\uff49\uff43\uff45",
    "kelvin sign": "\u212aelly",  # lower() gives "kelly"
    "angstrom sign": "\u212bsa",  # lower() gives a Latin a with ring above
    "dotted capital i": "\u0130van",  # lower() gives "i" and a combining dot
    "dotless i": "al\u0131ce",
    "long s": "\u017fam",  # upper() gives "S"
    "sharp s": "stra\u00dfe",
    "zero width space": "ali\u200bce",
    "zero width joiner": "ali\u200dce",
    "soft hyphen": "ali\u00adce",
    "combining acute": "alice\u0301",
    "nbsp inside": "ali\u00a0ce",
    "mathematical bold": "\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e",
    "superscript digit": "user\u00b9",
    "arabic-indic digit": "user\u0661",
}
MALFORMED_NAMES = ["-alice", ".alice", "_alice", "a" * 33, "al ice", "al/ice", "al#ice", "@alice"]


@pytest.mark.parametrize("raw", [*HOSTILE_NAMES.values(), *MALFORMED_NAMES])
def test_names_are_refused_not_normalised(raw: str) -> None:
    assert user_name(raw) is None
    assert room_name("#" + raw) is None


@given(st.text(max_size=40))
def test_any_accepted_name_is_plain_ascii(raw: str) -> None:
    for fold, pattern, text in ((user_name, USER_NAME, raw), (room_name, ROOM_NAME, "#" + raw)):
        name = fold(text)
        if name is not None:
            assert text.isascii()
            assert name == text.lower()
            assert pattern.fullmatch(name)
            assert fold(name) == name  # canonical forms are fixed points


def test_hostile_names_on_the_wire(make_server: ServerFactory) -> None:
    server = make_server(rate={"errors": {"rate": 1000, "burst": 1000}})  # many refusals here
    server.add_user("kelly")
    server.add_user("alice")
    mallory = server.user("mallory")
    for label, raw in HOSTILE_NAMES.items():
        # A look-alike of an existing account, with that account's real password: refused.
        stranger = server.client()
        reply = stranger.request(f"/login {raw} {PASSWORD}")
        assert reply == "ERR auth-failed wrong name or password", label
        stranger.close()
        for request in (f"/msg {raw} hello", f"/history {raw}"):
            assert mallory.request(request).startswith("ERR bad-argument"), (label, request)
        for request in (f"/join #{raw}", f"/who #{raw}", f"/say #{raw} hi", f"/part #{raw}"):
            assert mallory.request(request).startswith("ERR bad-argument"), (label, request)
    assert mallory.request("/rooms") == "OK rooms #lobby"
    # Upper case ASCII is the same name, as documented.
    assert server.client().request(f"/login KELLY {PASSWORD}").startswith("OK login kelly")


def test_admin_commands_refuse_hostile_names(make_server: ServerFactory) -> None:
    server = make_server(rate={"errors": {"rate": 1000, "burst": 1000}})
    root = server.user("root", admin=True)
    server.add_user("kelly")
    for raw in HOSTILE_NAMES.values():
        assert root.request(f"/kick {raw}").startswith("ERR bad-argument")


@pytest.mark.parametrize("raw", [HOSTILE_NAMES["kelvin sign"], HOSTILE_NAMES["cyrillic a"]])
def test_cli_refuses_hostile_account_names(
    raw: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, {"storage": {"database": "db.sqlite"}, "auth": {"argon2": CHEAP_ARGON2}}
    )
    assert main(["db", "init", "-c", str(config)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long password\n"))
    assert main(["user", "add", raw, "--password-stdin", "-c", str(config)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1  # one line, no traceback
    assert main(["user", "list", "--json", "-c", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "[]"
