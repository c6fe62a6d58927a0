"""The `sealroom` command line, in-process (fast) and once as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CHEAP_ARGON2, Server, ServerFactory, write_config
from sealroom.cli.main import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path, {"storage": {"database": "db/sealroom.db"}, "auth": {"argon2": CHEAP_ARGON2}}
    )


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: str = "") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(argv)


def test_user_lifecycle(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ["-c", str(config)]
    assert (
        run(
            ["user", "add", "Alice", "--admin", "--password-stdin", *c],
            monkeypatch,
            "a long password\n",
        )
        == 0
    )
    assert (
        run(["user", "add", "bob", "--password-stdin", *c], monkeypatch, "another password\r\n")
        == 0
    )
    assert run(["user", "list", "--json", *c], monkeypatch) == 0
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [(r["name"], r["role"], r["state"]) for r in rows] == [
        ("alice", "admin", "enabled"),
        ("bob", "user", "enabled"),
    ]
    assert run(["user", "disable", "bob", *c], monkeypatch) == 0
    assert run(["user", "list", *c], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "bob" in out
    assert "disabled" in out
    assert run(["user", "enable", "bob", *c], monkeypatch) == 0
    assert (
        run(["user", "passwd", "bob", "--password-stdin", *c], monkeypatch, "a new password\n") == 0
    )
    assert run(["user", "remove", "bob", *c], monkeypatch) == 0
    assert run(["user", "list", "--json", *c], monkeypatch) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out.splitlines()[-1])] == ["alice"]
    assert (config.parent / "db" / "sealroom.db").exists()  # relative to the config file


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["user", "add", "bad name!", "--password-stdin"], "a long password\n", "invalid user"),
        (["user", "add", "carol", "--password-stdin"], "short\n", "8 to 1024"),
        (["user", "add", "carol", "--password-stdin"], "bell\x07 password\n", "control"),
        (["user", "remove", "nobody"], "", "no account nobody"),
        (["user", "disable", "nobody"], "", "no account nobody"),
        (["user", "passwd", "nobody", "--password-stdin"], "a long password\n", "no account"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str],
    stdin: str,
    message: str,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run([*argv, "-c", str(config)], monkeypatch, stdin) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_duplicate_account(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["user", "add", "dave", "--password-stdin", "-c", str(config)]
    assert run(argv, monkeypatch, "a long password\n") == 0
    assert run(argv, monkeypatch, "a long password\n") == 1
    assert "already exists" in capsys.readouterr().err


def test_config_from_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEALROOM_CONFIG", str(config))
    assert run(["check-config"], monkeypatch) == 0
    assert str(config) in capsys.readouterr().out


def test_check_config_reports_every_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: {max_connections: zero, bogus: 1}\nlisten: 7\n")
    assert run(["check-config", "-c", str(bad)], monkeypatch) == 1
    err = capsys.readouterr().err
    for key in ("limits.max_connections", "limits.bogus", "listen"):
        assert key in err


def test_bad_config_is_a_user_error_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense: true\n")
    assert run(["user", "list", "-c", str(bad)], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("sealroom: configuration:")
    assert err.count("\n") == 1


def test_bad_usage_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as info:
        run(["user", "add"], monkeypatch)
    assert info.value.code == 2
    assert run([], monkeypatch) == 2


def test_certs_init_and_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "certs"
    assert run(["certs", "init", "--dir", str(target), "--host", "chat.example"], monkeypatch) == 0
    assert {p.name for p in target.iterdir()} == {"ca.crt", "ca.key", "server.crt", "server.key"}
    assert run(["certs", "init", "--dir", str(target)], monkeypatch) == 1
    assert "--force" in capsys.readouterr().err
    assert run(["certs", "init", "--dir", str(target), "--force"], monkeypatch) == 0


def test_serve_with_missing_certificate_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"tls": {"cert": "missing.crt", "key": "missing.key"}})
    assert run(["serve", "-c", str(config)], monkeypatch) == 1
    err = capsys.readouterr().err
    assert "missing" in err
    assert "Traceback" not in err


def test_disable_and_remove_drop_live_sessions(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: Server = make_server()
    alice = server.user("alice")
    bob = server.user("bob")
    assert run(["user", "disable", "alice", "-c", str(server.config)], monkeypatch) == 0
    assert alice.closed(timeout=3)[-1] == "BYE account-disabled"
    assert run(["user", "remove", "bob", "-c", str(server.config)], monkeypatch) == 0
    assert bob.closed(timeout=3)[-1] == "BYE account-removed"
    again = server.client()
    assert again.request("/login alice correct horse battery").startswith("ERR auth-failed")


def test_subprocess_smoke(tmp_path: Path, config: Path) -> None:
    env = {**os.environ, "SEALROOM_CONFIG": str(config)}
    for argv in (["--version"], ["check-config"], ["user", "list", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "sealroom", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "sealroom", "user", "remove", "ghost"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == "sealroom: no account ghost\n"


def test_user_import(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from argon2 import PasswordHasher

    hashed = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pre-hashed pw")
    source = tmp_path / "accounts.txt"
    source.write_text(f"# bench accounts\nann:plain password one\nBen:{hashed}\n\n")
    assert run(["user", "import", str(source), "-c", str(config)], monkeypatch) == 0
    assert "imported 2 accounts; 0 already existed" in capsys.readouterr().out
    assert run(["user", "import", str(source), "-c", str(config)], monkeypatch) == 0
    assert "imported 0 accounts; 2 already existed" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    for content, message in (
        ("x:short\n", "8 to 1024"),
        ("no colon here\n", "NAME:PASSWORD"),
        ("ok:$argon2id$garbage\n", "argon2id"),
        ("a:long password\nA:long password\n", "twice"),
    ):
        bad.write_text(content)
        assert run(["user", "import", str(bad), "-c", str(config)], monkeypatch) == 1
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1
