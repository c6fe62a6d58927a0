"""Logs: the journal's format under systemd, JSON for aggregation, escaping, who and where on
every connection line, and never a password."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ServerFactory
from opshelp import sealroom_logs
from sealroom.ops.logs import logs_to_journal

log = logging.getLogger("sealroom.test")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[io.TextIOWrapper]:
    with (tmp_path / "stderr.log").open("w+", encoding="utf-8") as stream:
        yield stream


def written(stream: io.TextIOWrapper) -> list[str]:
    stream.flush()
    return Path(stream.name).read_text(encoding="utf-8").splitlines()


def fail(error: Exception) -> None:
    raise error


def journal_id(stream: io.TextIOWrapper) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_text_has_time_stamps_outside_the_journal(
    log_file: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with sealroom_logs("info", "text", log_file):
        log.info("hello")
    [line] = written(log_file)
    assert TIMESTAMP.match(line)
    assert line.endswith("INFO sealroom.test: hello")


def test_journal_lines_have_a_priority_and_no_time(
    log_file: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", journal_id(log_file))
    assert logs_to_journal(log_file)
    with sealroom_logs("debug", "text", log_file):
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        try:
            fail(RuntimeError("boom"))
        except RuntimeError:
            log.exception("failed")
    lines = written(log_file)
    assert lines[:4] == [
        "<7>DEBUG sealroom.test: d",
        "<6>INFO sealroom.test: i",
        "<4>WARNING sealroom.test: w",
        "<3>ERROR sealroom.test: e",
    ]
    # A traceback stays with its record: every line carries the priority, none a time.
    assert lines[4] == "<3>ERROR sealroom.test: failed"
    assert all(line.startswith("<3>  ") for line in lines[5:])
    assert lines[-1] == "<3>  RuntimeError: boom"


def test_an_inherited_journal_stream_is_not_trusted(
    log_file: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JOURNAL_STREAM is inherited by children whose stderr went elsewhere: check the inode.
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    assert not logs_to_journal(log_file)
    assert not logs_to_journal(io.StringIO())
    with sealroom_logs("info", "text", log_file):
        log.info("hello")
    assert TIMESTAMP.match(written(log_file)[0])


def test_json_lines(log_file: io.TextIOWrapper) -> None:
    with sealroom_logs("info", "json", log_file):
        log.info("from %s: %s", "10.0.0.1 [eve]", "bell\x07 esc\x1b[31m rtl\u202e")
        try:
            fail(ValueError("bad"))
        except ValueError:
            log.exception("oops")
    first, second = written(log_file)
    entry = json.loads(first)
    assert entry["level"] == "info"
    assert entry["logger"] == "sealroom.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert entry["message"] == "from 10.0.0.1 [eve]: bell\x07 esc\x1b[31m rtl\u202e"
    assert first.isascii()
    assert not any(ord(c) < 0x20 for c in first)  # JSON escapes them
    assert "ValueError: bad" in json.loads(second)["traceback"]


def test_text_escapes_control_characters(log_file: io.TextIOWrapper) -> None:
    with sealroom_logs("info", "text", log_file):
        log.info("name %s", "eve\x1b[2J\r\nINFO sealroom: forged\u202e")
    lines = written(log_file)
    assert lines[0].endswith(r"name eve\x1b[2J\x0d")
    assert lines[1] == r"  INFO sealroom: forged\u202e"  # a continuation, not a new record


RIGHT = "correct-horse-battery-staple"  # /passwd OLD NEW: OLD has no spaces
SECRETS = ("wrong password 1", "s3cret-but-wrong", RIGHT, "a brand new password")
CONNECTION_LOGGERS = ("sealroom.server", "sealroom.session")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_password_in_logs_after_wrong_and_right_logins(
    make_server: ServerFactory, log_file: io.TextIOWrapper, fmt: str
) -> None:
    with sealroom_logs("debug", fmt, log_file):
        server = make_server()
        server.add_user("alice", RIGHT)
        client = server.client()
        assert client.request(f"/login alice {SECRETS[0]}").startswith("ERR auth-failed")
        assert client.request(f"/login nobody {SECRETS[1]}").startswith("ERR auth-failed")
        assert client.request(f"/login alice {RIGHT}").startswith("OK login")
        assert client.request(f"/passwd {SECRETS[1]} {SECRETS[3]}").startswith("ERR auth-failed")
        assert client.request(f"/passwd {RIGHT} {SECRETS[3]}") == "OK passwd"
        other = server.client()
        assert other.request(f"/login alice {SECRETS[3]}").startswith("OK login")
        client.close()
        other.close()
        server.app.stop(grace_s=1.0)
    lines = written(log_file)
    text = "\n".join(lines)
    assert "login failed" in text
    assert "logged in" in text
    assert "password changed" in text
    for secret in SECRETS:
        assert secret not in text
        for word in secret.split():
            if len(word) >= 6 and word not in ("password",):
                assert word not in text, word
    # Client address and account on every connection line.
    records = [json.loads(line) for line in lines] if fmt == "json" else None
    messages = (
        [r["message"] for r in records if r["logger"] in CONNECTION_LOGGERS]
        if records is not None
        else [
            line.split(": ", 1)[1]
            for line in lines
            if any(f" {name}: " in line for name in CONNECTION_LOGGERS)
        ]
    )
    assert messages
    for message in messages:
        assert re.match(r"127\.0\.0\.1 \[(alice|-)\]: ", message), message
