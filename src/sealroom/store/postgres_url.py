"""A PostgreSQL URL as Sealroom uses it: bounds added to every connection, and the
password kept out of every message (:func:`secrets_in`, :func:`location`)."""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Final
from urllib.parse import quote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

CONNECT_TIMEOUT_S: Final = 5  # libpq's connect_timeout, per host tried
STATEMENT_TIMEOUT_MS: Final = 10_000
LOCK_TIMEOUT_MS: Final = 5_000  # as long as SQLite's busy timeout
IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 60_000  # a client that died inside a transaction


def secrets_in(url: str) -> list[str]:
    """The URL's password as written (percent-encoded) and as meant, to keep out of messages."""
    found = set()
    with suppress(ValueError):
        userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
        if at and ":" in userinfo:
            found.add(userinfo.partition(":")[2])
    with suppress(psycopg.Error):
        found.add(str(conninfo_to_dict(url).get("password") or ""))
    found.discard("")
    return sorted(found, key=len, reverse=True)


def location(params: dict[str, Any]) -> str:
    """``postgresql://user@host:port/dbname``, from what the URL gave; never the password."""
    host = str(params.get("host") or "")
    user = str(params.get("user") or "")
    port = str(params.get("port") or "")
    dbname = str(params.get("dbname") or "")
    socket_dir = host.startswith("/")
    netloc = (quote(user, safe="") + "@" if user else "") + ("" if socket_dir else host)
    if port:
        netloc += f":{port}"
    location = f"postgresql://{netloc}/{quote(dbname, safe='')}"
    return f"{location}?host={host}" if socket_dir else location


def conninfo(params: dict[str, Any]) -> str:
    """The URL's parameters with Sealroom's bounds added (the URL's own win where it has
    them; its ``options`` are kept, ours appended)."""
    ours = {
        "statement_timeout": STATEMENT_TIMEOUT_MS,
        "lock_timeout": LOCK_TIMEOUT_MS,
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT_MS,
    }
    options = " ".join(f"-c {key}={value}" for key, value in ours.items())
    merged = dict(params)
    merged.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    merged.setdefault("application_name", "sealroom")
    merged["options"] = f"{merged['options']} {options}" if merged.get("options") else options
    return make_conninfo(**merged)
