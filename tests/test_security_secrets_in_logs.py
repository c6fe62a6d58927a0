"""Threat: secrets a client typed end up in the server's log.

Only valid names are logged: a password typed in the name field (`/login PASSWORD NAME`) or
a token in the name field (`/resume TOKEN NAME`) never reaches the log, and a token never
does in any position.
"""

from __future__ import annotations

import logging

import pytest

from helpers import Server

SECRET = "hunter2!Secret#42"  # a password: not a valid user name


def test_password_in_the_name_field_is_not_logged(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.add_user("alice")
    client = server.client()
    with caplog.at_level(logging.DEBUG, logger="sealroom"):
        assert client.request(f"/login {SECRET} alice").startswith("ERR auth-failed")
        assert client.request("/login a-typo-name wrong password").startswith("ERR auth-failed")
    assert SECRET not in caplog.text
    assert SECRET.lower() not in caplog.text
    assert "a-typo-name" in caplog.text  # a valid name is logged, so failures can be read


def test_tokens_are_never_logged(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    alice = server.user("alice")
    token = alice.request("/token").split()[2]
    client = server.client()
    with caplog.at_level(logging.DEBUG, logger="sealroom"):
        assert client.request(f"/resume {token} alice").startswith("ERR ")
        assert client.request(f"/resume alice {token}").startswith("OK login alice")
    assert token not in caplog.text
    assert token.lower() not in caplog.text
