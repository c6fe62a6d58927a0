"""Keep docs/protocol.md, the code and SPEC.md in step.

docs/protocol.md is the protocol reference users get with the repository. For five kinds of
item (error codes, request verbs, server line words, CLI commands, configuration keys) it
lists what the code implements in tables, marks the rows that are Sealroom's additions to
the contract, and names in its "Not yet implemented" section what the contract describes but
the code lacks.

Two halves:

- docs against code, always: each table equals what the code has, exactly, and nothing the
  docs call "not yet implemented" is in the code.
- SPEC against docs, when ``../shared/SPEC.md`` (beside the repository) exists: every SPEC
  item is in the docs' tables or in their "not yet" list, and every table row beyond SPEC is
  marked as a Sealroom addition. SPEC.md is not part of the repository, so a plain clone has
  only the first half; ``test_what_is_compared`` says which halves apply, instead of a skip.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sealroom.cli.main import _build_parser
from sealroom.config import BucketSettings, Settings, settings_from_mapping
from sealroom.core.errors import ErrorCode
from sealroom.core.protocol import SAY_CURRENT
from sealroom.session import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "protocol.md"
SPEC = ROOT.parent / "shared" / "SPEC.md"
SRC = ROOT / "src" / "sealroom"

KINDS = ("errors", "verbs", "lines", "commands", "config")
# The first header cell of the docs table that lists each kind.
TABLE_HEADER = {
    "errors": "code",
    "verbs": "request",
    "lines": "line",
    "commands": "command",
    "config": "key",
}
ADDITION = "Sealroom addition"
NOT_YET_HEADING = "## Not yet implemented"


# -- reading markdown --------------------------------------------------------------------------


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def tables(text: str) -> dict[str, list[list[str]]]:
    """Every table's body rows (as cells), collected by the table's first header cell."""
    found: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        # A cell may hold an escaped bar, as in `/history #ROOM\|NAME [N]`.
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if rows is None:  # the header row
            rows = found.setdefault(cells[0], [])
        elif not set(cells[0]) <= set("-: "):  # not the |---| separator row
            rows.append(cells)
    return found


def verbs_in(cell: str) -> list[str]:
    """``/join #ROOM`` names the verb ``join``; ``TEXT`` is a plain line to the current room."""
    verbs = []
    for span in backticked(cell):
        if match := re.match(r"/([a-z]+)", span):
            verbs.append(match.group(1))
        elif span == "TEXT":
            verbs.append(SAY_CURRENT)
    return verbs


def commands_in(cell: str) -> list[str]:
    """``sealroom user add NAME [--admin]`` names the command ``user add``.

    SPEC abbreviates a second command in the same cell: ``sealroom user disable NAME`` /
    ``enable NAME`` is also ``user enable``, and ``sealroom db backup PATH`` / ``db check`` is
    also ``db check``; a span without ``sealroom`` takes the group from the span before it.
    """
    commands: list[list[str]] = []
    for span in backticked(cell):
        words = span.removeprefix("sealroom ").split()
        name = []
        for word in words:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break  # an argument (NAME, [--json], #ROOM, …) ends the command's name
            name.append(word)
        if not span.startswith("sealroom ") and commands and name[0] != commands[-1][0]:
            name = [*commands[-1][:-1], *name]
        commands.append(name)
    return [" ".join(name) for name in commands]


def items_in(kind: str, cell: str) -> list[str]:
    """The items a table row's first cell names."""
    if kind == "verbs":
        return verbs_in(cell)
    if kind == "commands":
        return commands_in(cell)
    first = backticked(cell)[0]
    return [first.split()[0]] if kind == "lines" else [first]


def kind_of(item: str) -> tuple[str, str]:
    """(kind, item) for a backticked item in the "not yet" list, told apart by its shape."""
    if item.startswith("/"):
        return "verbs", item[1:]
    if item.startswith("sealroom "):
        return "commands", commands_in(f"`{item}`")[0]
    if re.fullmatch(r"[A-Z]+", item):
        return "lines", item
    if re.fullmatch(r"[a-z_]+(\.[a-z0-9_]+)+", item):
        return "config", item
    if re.fullmatch(r"[a-z]+(-[a-z]+)*", item):
        return "errors", item
    raise AssertionError(f"docs/protocol.md, {NOT_YET_HEADING}: what kind of item is {item!r}?")


@dataclass(frozen=True)
class Docs:
    """What docs/protocol.md says, per kind."""

    implemented: dict[str, set[str]]  # the reference tables
    additions: dict[str, set[str]]  # the rows marked as Sealroom additions
    not_yet: dict[str, set[str]]  # the "Not yet implemented" list
    defaults: dict[str, Any]  # configuration key -> its documented default, parsed as YAML


def read_docs() -> Docs:
    reference, _, not_yet_part = DOCS.read_text().partition(NOT_YET_HEADING)
    assert not_yet_part, f"docs/protocol.md has no {NOT_YET_HEADING!r} section"
    implemented: dict[str, set[str]] = {kind: set() for kind in KINDS}
    additions: dict[str, set[str]] = {kind: set() for kind in KINDS}
    defaults: dict[str, Any] = {}
    found = tables(reference)
    for kind in KINDS:
        for row in found.get(TABLE_HEADER[kind], []):
            items = items_in(kind, row[0])
            implemented[kind].update(items)
            if any(ADDITION in cell for cell in row[1:]):
                additions[kind].update(items)
            if kind == "config":
                defaults[items[0]] = yaml.safe_load(backticked(row[1])[0])
    not_yet: dict[str, set[str]] = {kind: set() for kind in KINDS}
    # List items only (a "- " line and its indented continuation); prose may say more.
    for bullet in re.findall(r"^- .*(?:\n  .*)*", not_yet_part.split("\n## ")[0], re.MULTILINE):
        for item in backticked(bullet):
            kind, name = kind_of(item)
            not_yet[kind].add(name)
    return Docs(implemented, additions, not_yet, defaults)


DOCUMENTED = read_docs()


# -- what the code has -------------------------------------------------------------------------


def config_keys(section: Any, prefix: str = "") -> set[str]:
    """Dotted keys of a settings section; a token bucket ``{rate, burst}`` is one value."""
    keys: set[str] = set()
    for field in fields(section):
        if field.name == "source":  # where the file was read from, not a key
            continue
        key, value = prefix + field.name, getattr(section, field.name)
        if is_dataclass(value) and not isinstance(value, BucketSettings):
            keys |= config_keys(value, key + ".")
        else:
            keys.add(key)
    return keys


def cli_commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
    """Every runnable command, as its words after ``sealroom`` (``user add``)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        assert callable(parser.get_default("handler")), prefix
        yield prefix
    for group in groups:
        for name, sub in group.choices.items():
            yield from cli_commands(sub, f"{prefix} {name}".strip())


# The packages that write protocol lines (the session, the hub, the outbox, ERR replies).
LINE_WRITERS = ("core", "session", "state")


def words_the_server_writes() -> set[str]:
    """The first word of every kind of line the server writes.

    Each is written as a string literal, or an f-string, that starts with its upper-case
    word: ``encode_line("JOIN", ...)``, ``f"OK say {room} {message_id}"``. Docstrings,
    ``__all__`` and the dispatch table's usage strings (``Syntax("TEXT", ...)``) are not lines.
    """
    words: set[str] = set()
    for package in LINE_WRITERS:
        for path in sorted((SRC / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            not_lines: set[int] = set()
            for node in ast.walk(tree):
                body = getattr(node, "body", None)
                if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                    not_lines.add(id(body[0].value))  # a docstring
                if isinstance(node, ast.Assign) and "__all__" in ast.unparse(node.targets[0]):
                    not_lines.update(id(n) for n in ast.walk(node.value))
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "Syntax":
                    not_lines.update(id(n) for arg in node.args for n in ast.walk(arg))
            for node in ast.walk(tree):  # an f-string's leading text is a Constant too
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in not_lines
                    and (match := re.match(r"([A-Z]{2,})(?: |$)", node.value))
                ):
                    words.add(match.group(1))
    return words


def code_items(kind: str) -> set[str]:
    if kind == "errors":
        return {code.value for code in ErrorCode}
    if kind == "verbs":
        return set(COMMANDS)
    if kind == "lines":
        return words_the_server_writes()
    if kind == "commands":
        return set(cli_commands(_build_parser()))
    return config_keys(Settings())


# -- docs against code -------------------------------------------------------------------------


def assert_docs_match_code(kind: str) -> None:
    documented, implemented = DOCUMENTED.implemented[kind], code_items(kind)
    assert documented - implemented == set(), f"documented, but not in the code ({kind})"
    assert implemented - documented == set(), f"in the code, but not documented ({kind})"
    not_yet = DOCUMENTED.not_yet[kind]
    assert not_yet & implemented == set(), f"implemented, but listed as not yet ({kind})"


def test_error_codes_are_documented() -> None:
    assert_docs_match_code("errors")


def test_request_verbs_are_documented() -> None:
    assert SAY_CURRENT in COMMANDS  # the plain line, documented as the `TEXT` row
    assert_docs_match_code("verbs")


def test_server_lines_are_documented() -> None:
    assert_docs_match_code("lines")


def test_cli_commands_are_documented() -> None:
    assert_docs_match_code("commands")


def test_configuration_keys_are_documented() -> None:
    assert_docs_match_code("config")


def test_documented_defaults_are_the_defaults(tmp_path: Path) -> None:
    """A file spelling out every documented default configures exactly the built-in defaults."""
    mapping: dict[str, Any] = {}
    for key, value in DOCUMENTED.defaults.items():
        *sections, name = key.split(".")
        target = mapping
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    assert settings_from_mapping(mapping, tmp_path) == settings_from_mapping(None, tmp_path)


# -- SPEC against docs -------------------------------------------------------------------------


def spec_config(spec: str) -> dict[str, Any]:
    """The configuration keys of SPEC's YAML example, flattened, with their defaults."""

    def flatten(mapping: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
        for key, value in mapping.items():
            if isinstance(value, dict) and set(value) != {"rate", "burst"}:
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    block = spec.split("```yaml", 1)[1].split("```", 1)[0]
    return dict(flatten(yaml.safe_load(block), ""))


def spec_items(spec: str, kind: str) -> set[str]:
    if kind == "errors":
        paragraph = spec.split("Error codes", 1)[1].split("\n\n", 1)[0]
        return set(re.findall(r"`([a-z-]+)`", paragraph))
    if kind == "lines":
        section = spec.split("### Replies and events", 1)[1].split("Error codes", 1)[0]
        return {span.split()[0] for span in backticked(section) if re.match(r"[A-Z]{2,}\b", span)}
    if kind == "config":
        return set(spec_config(spec))
    table = tables(spec)[TABLE_HEADER[kind]]
    return {item for row in table for item in items_in(kind, row[0])}


SPEC_TEXT = SPEC.read_text() if SPEC.exists() else None


@pytest.mark.parametrize("kind", KINDS)
def test_spec_and_docs_agree(kind: str) -> None:
    if SPEC_TEXT is None:
        return  # not applicable without SPEC.md: see test_what_is_compared
    spec = spec_items(SPEC_TEXT, kind)
    implemented, not_yet = DOCUMENTED.implemented[kind], DOCUMENTED.not_yet[kind]
    assert spec - implemented - not_yet == set(), "in SPEC, but not in docs/protocol.md"
    assert not_yet - spec == set(), "listed as not yet implemented, but not in SPEC"
    assert implemented - spec == DOCUMENTED.additions[kind], "rows beyond SPEC != additions"


def test_spec_defaults_are_the_documented_defaults() -> None:
    if SPEC_TEXT is None:
        return  # not applicable without SPEC.md: see test_what_is_compared
    from_spec = spec_config(SPEC_TEXT)
    shared = from_spec.keys() & DOCUMENTED.defaults.keys()
    assert {key: from_spec[key] for key in shared} == {
        key: DOCUMENTED.defaults[key] for key in shared
    }


def test_what_is_compared() -> None:
    """The docs half always compares real lists; the SPEC half only with SPEC.md beside us.

    Without SPEC.md (a plain clone) the SPEC tests above have nothing to compare and pass;
    this test is where that is decided, and it proves the docs half did not pass vacuously.
    """
    assert DOCS.exists()
    for kind in KINDS:
        assert DOCUMENTED.implemented[kind], f"docs/protocol.md lists no {kind}"
        assert code_items(kind), f"found no {kind} in the code"
    if SPEC_TEXT is None:
        assert not SPEC.exists()
    else:
        for kind in KINDS:
            assert spec_items(SPEC_TEXT, kind), f"found no {kind} in SPEC.md"
