"""The import contracts in pyproject.toml hold for the code, and each of them can fail.

`lint-imports` runs as a subprocess (the one installed next to this Python) on this tree's
sources. The second half builds a skeleton `sealroom` in a temporary folder that keeps
every contract, then breaks one contract at a time: a contract that cannot fail checks
nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PYPROJECT = PROJECT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
VERDICT = re.compile(r"^(?P<name>.+) (?P<verdict>KEPT|BROKEN)\b", re.MULTILINE)


def contract_names() -> dict[str, str]:
    """Contract id -> name, as pyproject.toml declares them."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    return {contract["id"]: contract["name"] for contract in contracts}


CONTRACTS = contract_names()


def lint_imports(project: Path) -> tuple[int, str]:
    """Run lint-imports in `project` (it reads pyproject.toml there) on `project`/src."""
    inherited = os.environ.get("PYTHONPATH")
    path = str(project / "src") + (os.pathsep + inherited if inherited else "")
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=project,
        # Wide, so that no contract's name is wrapped across lines of the report.
        env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary."""
    return {match["name"]: match["verdict"] for match in VERDICT.finditer(output)}


@pytest.fixture(scope="module")
def report() -> tuple[int, str]:
    return lint_imports(PROJECT)


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_contract_is_kept(report: tuple[int, str], contract: str) -> None:
    _, output = report
    assert verdicts(output).get(CONTRACTS[contract]) == "KEPT", output


def test_lint_imports_passes(report: tuple[int, str]) -> None:
    code, output = report
    assert code == 0, output


# A package shaped like sealroom that keeps every contract: each layer imports the one
# below it, and each owner of sqlite3, psycopg, redis (hiredis), argon2 and the sockets
# imports them.
SKELETON = {
    "__init__.py": "",
    "__main__.py": "import sealroom.cli\n",
    "cli/__init__.py": "import sealroom.client\nimport sealroom.ops\nimport sealroom.store\n",
    "ops/__init__.py": (
        "import socket\nimport sealroom.cluster\nimport sealroom.net\n"
        "import sealroom.store.sqlite\n"
    ),
    "cluster/__init__.py": "import sealroom.cluster.plane\n",
    "cluster/plane.py": "import hiredis\nimport redis\nimport sealroom.session\n",
    "net/__init__.py": "import selectors\nimport ssl\nimport sealroom.session\n",
    "session/__init__.py": "import sealroom.policy.auth\nimport sealroom.state\n",
    "state/__init__.py": "import sealroom.config\n",
    "policy/__init__.py": "import sealroom.config\n",
    "policy/auth.py": "import argon2\nimport sealroom.core\n",
    "config.py": "import sealroom.core\n",
    "core/__init__.py": "",
    "store/__init__.py": "import sealroom.core\n",
    "store/sqlite.py": "import sqlite3\nimport sealroom.core\n",
    "store/postgres.py": "import psycopg\nimport psycopg_pool\nimport sealroom.core\n",
    "client/__init__.py": "import socket\nimport ssl\nimport sealroom.core\n",
}

BREACHES = [
    # (module file, line added, contracts it breaks, the offending import as reported)
    ("policy/auth.py", "import sealroom.session", {"layers"}, "policy.auth -> sealroom.session"),
    ("config.py", "import sealroom.state", {"layers"}, "sealroom.config -> sealroom.state"),
    ("state/__init__.py", "import sealroom.policy", {"layers"}, "state -> sealroom.policy"),
    ("extra/__init__.py", "", {"layers"}, "- sealroom.extra"),
    # The client imports core, so core importing upwards drags the client along.
    ("core/__init__.py", "import sealroom.config", {"layers", "client"}, "core -> sealroom.config"),
    ("ops/__init__.py", "import sqlite3", {"sqlite3"}, "sealroom.ops -> sqlite3"),
    ("cli/__init__.py", "import argon2", {"argon2"}, "sealroom.cli -> argon2"),
    ("ops/__init__.py", "import psycopg", {"psycopg"}, "sealroom.ops -> psycopg"),
    ("session/__init__.py", "import psycopg_pool", {"psycopg"}, "session -> psycopg_pool"),
    ("store/sqlite.py", "import socket", {"sockets"}, "sealroom.store.sqlite -> socket"),
    ("session/__init__.py", "import select", {"sockets"}, "sealroom.session -> select"),
    ("core/__init__.py", "import ssl", {"sockets"}, "sealroom.core -> ssl"),
    ("state/__init__.py", "import sealroom.store", {"store"}, "state -> sealroom.store"),
    ("net/__init__.py", "import sealroom.store", {"store"}, "sealroom.net -> sealroom.store"),
    ("client/__init__.py", "import sealroom.net", {"client"}, "client -> sealroom.net"),
    ("ops/__init__.py", "import redis", {"redis"}, "sealroom.ops -> redis"),
    ("net/__init__.py", "import hiredis", {"redis"}, "sealroom.net -> hiredis"),
    ("cluster/__init__.py", "import sealroom.net", {"layers"}, "cluster -> sealroom.net"),
    ("cluster/__init__.py", "import sealroom.store", {"store"}, "cluster -> sealroom.store"),
]


def skeleton(root: Path, breach: tuple[str, str] | None = None) -> Path:
    """The skeleton package under `root`/src, with pyproject.toml's contracts, and one breach."""
    files = dict(SKELETON)
    if breach is not None:
        module, line = breach
        files[module] = files.get(module, "") + line + "\n"
    for relative, text in files.items():
        target = root / "src" / "sealroom" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    (root / "pyproject.toml").write_bytes(PYPROJECT.read_bytes())
    return root


def test_skeleton_keeps_every_contract(tmp_path: Path) -> None:
    code, output = lint_imports(skeleton(tmp_path))
    assert code == 0, output
    assert verdicts(output) == dict.fromkeys(CONTRACTS.values(), "KEPT"), output


@pytest.mark.parametrize(
    ("module", "line", "contracts", "offence"),
    BREACHES,
    ids=[f"{module}:{line or 'new package'}" for module, line, _, _ in BREACHES],
)
def test_a_breach_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contracts: set[str], offence: str
) -> None:
    code, output = lint_imports(skeleton(tmp_path, (module, line)))
    assert code == 1, output
    broken = {name for name, verdict in verdicts(output).items() if verdict == "BROKEN"}
    assert broken == {CONTRACTS[contract] for contract in contracts}, output
    assert offence in output, output
