"""Keep the code in step with SPEC.md: error codes, commands and configuration keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sealroom.cli.main import _build_parser
from sealroom.config import Settings, settings_from_mapping
from sealroom.core.errors import ErrorCode
from sealroom.session.machine import COMMANDS

SPEC = Path(__file__).resolve().parents[2] / "shared" / "SPEC.md"
pytestmark = pytest.mark.skipif(not SPEC.exists(), reason="SPEC.md is not beside the repository")

NOT_YET: set[str] = set()  # requests SPEC.md names that the server does not implement yet


def spec_text() -> str:
    return SPEC.read_text()


def test_error_codes_match() -> None:
    section = spec_text().split("Error codes", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`([a-z-]+)`", section)) == {code.value for code in ErrorCode}


def test_every_request_has_a_command() -> None:
    table = spec_text().split("| request |", 1)[1].split("\n\n", 1)[0]
    requests = set(re.findall(r"`/([a-z]+)", table))
    assert requests - NOT_YET <= set(COMMANDS)
    assert set(COMMANDS) - {""} <= requests


def test_every_cli_command_parses() -> None:
    commands = re.findall(r"^\| `sealroom ([a-z -]+?)(?: [A-Z\[]|`)", spec_text(), re.MULTILINE)
    assert len(commands) >= 8
    parser = _build_parser()
    for command in commands:
        argv = command.split()
        if argv[:1] == ["user"] and argv[1] not in ("list",):
            argv.append("someone")
        args = parser.parse_args(argv)
        assert callable(args.handler), command


def test_configuration_example_is_the_defaults(tmp_path: Path) -> None:
    block = spec_text().split("```yaml", 1)[1].split("```", 1)[0]
    from_spec = settings_from_mapping(yaml.safe_load(block), tmp_path)
    assert from_spec == settings_from_mapping(None, tmp_path)
    assert from_spec.limits == Settings().limits
