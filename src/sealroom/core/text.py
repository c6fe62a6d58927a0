"""What text and names may look like: the rules shared by the wire protocol and the CLI.

Names are ASCII on purpose: homoglyphs and mixed scripts cannot impersonate anyone when
the alphabet is ``[a-z0-9_.-]``. Input is folded to lower case before it is checked.
"""

from __future__ import annotations

import re

# Control characters except TAB, DEL, C1 controls, the line and paragraph separators, and
# bidirectional overrides/isolates: anything that could drive another user's terminal,
# reorder what they see, or split one line in two for a program that splits lines the way
# str.splitlines() does (it also breaks at VT, FF, FS, GS, RS and NEL, all controls here).
FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

USER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
ROOM_NAME = re.compile(r"#[a-z0-9][a-z0-9_-]{0,31}")

PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 1024


def has_forbidden_chars(text: str) -> bool:
    return FORBIDDEN_CHARS.search(text) is not None


def user_name(raw: str) -> str | None:
    """The canonical (lower-case) user name, or None if ``raw`` is not a valid name."""
    name = raw.lower()
    # isascii first: str.lower() maps some non-ASCII letters onto ASCII ones (K -> k).
    if raw.isascii() and USER_NAME.fullmatch(name):
        return name
    return None


def room_name(raw: str) -> str | None:
    """The canonical (lower-case) room name, or None if ``raw`` is not a valid room."""
    name = raw.lower()
    if raw.isascii() and ROOM_NAME.fullmatch(name):
        return name
    return None


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be set as a new password, or None if it can."""
    if not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        return f"a password has {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters"
    if has_forbidden_chars(password):
        return "a password may not hold control characters or bidi overrides"
    return None


def escape_for_log(text: str) -> str:
    """Make untrusted text safe for one log line (as http.server does before logging)."""
    return FORBIDDEN_CHARS.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
