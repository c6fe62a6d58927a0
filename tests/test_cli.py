"""The `sealroom` command line, in-process (fast) and as a real subprocess where a terminal,
or its absence, matters."""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from helpers import CHEAP_ARGON2, LineReader, Server, ServerFactory, write_config
from opshelp import write_leaf
from sealroom.cli.main import _build_parser, main
from sealroom.store.sqlite import SqliteStore


@pytest.fixture
def bare_config(tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    """A configuration whose database does not exist yet."""
    return write_config(
        tmp_path,
        {
            "tls": {"cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
            "storage": {"database": "db/sealroom.db"},
            "auth": {"argon2": CHEAP_ARGON2},
        },
    )


@pytest.fixture
def config(bare_config: Path) -> Path:
    """A configuration with an empty database (as `sealroom db init` or the server makes)."""
    SqliteStore(bare_config.parent / "db" / "sealroom.db").close()
    return bare_config


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no SEALROOM_CONFIG: the built-in defaults apply."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("SEALROOM_CONFIG", raising=False)
    return folder


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


# -- issue 13: the operator's command line ---------------------------------------------------


def sealroom(
    *argv: str, stdin: str | None = "", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m sealroom`` with no controlling terminal (nothing can prompt)."""
    return subprocess.run(
        [sys.executable, "-m", "sealroom", *argv],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        env=env or {k: v for k, v in os.environ.items() if k != "SEALROOM_CONFIG"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("sealroom: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["user", "add", "zed", "--password-stdin"], "password123\n"),
        (["user", "passwd", "zed", "--password-stdin"], "password123\n"),
        (["user", "list"], ""),
        (["user", "disable", "zed"], ""),
        (["user", "enable", "zed"], ""),
        (["user", "remove", "zed"], ""),
        (["user", "role", "zed", "admin"], ""),
        (["db", "check"], ""),
        (["db", "backup", "copy.db"], ""),
    ],
)
def test_database_commands_never_create_a_database(
    argv: list[str],
    stdin: str,
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Report 1: run from another directory, `user add` made ./var/sealroom.db."""
    assert run(argv, monkeypatch, stdin) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no database at {elsewhere / 'var' / 'sealroom.db'}" in err
    assert "sealroom db init" in err
    assert list(elsewhere.iterdir()) == []


def test_user_import_never_creates_a_database(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = elsewhere.parent / "accounts.txt"
    accounts.write_text("ann:plain password one\n")
    assert run(["user", "import", str(accounts)], monkeypatch) == 1
    assert "no database at" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_db_check_of_a_mistyped_path_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Report 1: `db check -c n.yaml` with a missing none.db said `database ok`, made it."""
    config = tmp_path / "n.yaml"
    config.write_text("storage: {database: none.db}\n")
    assert run(["db", "check", "-c", str(config)], monkeypatch) == 1
    assert f"no database at {tmp_path / 'none.db'}" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_db_init_creates_a_private_database_once(
    bare_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = bare_config.parent / "db" / "sealroom.db"
    previous = os.umask(0o022)
    try:
        assert run(["db", "init", "-c", str(bare_config)], monkeypatch) == 0
    finally:
        os.umask(previous)
    assert f"created an empty database at {database}" in capsys.readouterr().out
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert (
        run(
            ["user", "add", "alice", "--password-stdin", "-c", str(bare_config)],
            monkeypatch,
            "a long password\n",
        )
        == 0
    )
    assert run(["db", "init", "-c", str(bare_config)], monkeypatch) == 0
    assert "exists (1 accounts); left as it is" in capsys.readouterr().out


def test_db_backup_is_private_and_db_check_reads_it(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Report 3 (backups were 0644) and report 9 (no way to check a backup file)."""
    backup = tmp_path / "backup.db"
    previous = os.umask(0o022)
    try:
        assert run(["db", "backup", str(backup), "-c", str(config)], monkeypatch) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    capsys.readouterr()
    assert run(["db", "check", str(backup)], monkeypatch) == 0
    assert f"database ok ({backup})" in capsys.readouterr().out
    missing = tmp_path / "mistyped.db"
    assert run(["db", "check", str(missing)], monkeypatch) == 1
    err = capsys.readouterr().err
    assert f"{missing}: no such file" in err
    assert not missing.exists()
    not_ours = tmp_path / "notes.txt"
    not_ours.write_text("hello\n" * 200)
    assert run(["db", "check", str(not_ours)], monkeypatch) == 1
    assert "not an SQLite database" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["user", "add", "carol", "--admin"], None),  # </dev/null
        (["user", "add", "erin"], "password123\n"),  # echo pw | … without --password-stdin
        (["user", "passwd", "alice"], None),
        (["user", "add", "carol", "--password-stdin"], ""),  # nothing on stdin
    ],
)
def test_no_traceback_without_a_terminal(config: Path, argv: list[str], stdin: str | None) -> None:
    """Report 2: GetPassWarning and an EOFError traceback without a terminal."""
    env = {**os.environ, "SEALROOM_CONFIG": str(config)}
    seeded = sealroom(
        "user", "add", "alice", "--password-stdin", stdin="a long password\n", env=env
    )
    assert seeded.returncode == 0, seeded.stderr
    err = one_line_error(sealroom(*argv, stdin=stdin, env=env))
    assert "Warning" not in err
    assert "--password-stdin" in err


def test_database_made_by_the_server_is_private(make_server: ServerFactory) -> None:
    """Report 3: under umask 022 var/sealroom.db, -wal and -shm were 0644."""
    previous = os.umask(0o022)
    try:
        server = make_server()
        server.user("alice")
        server.app.writer.flush()
        folder = server.config.parent
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.glob("sealroom.db*")}
    finally:
        os.umask(previous)
    assert modes == {"sealroom.db": 0o600, "sealroom.db-wal": 0o600, "sealroom.db-shm": 0o600}


# check-config: the TLS files -----------------------------------------------------------------


def tls_config(folder: Path, tls: dict[str, str]) -> Path:
    return write_config(folder, {"tls": tls})


def test_check_config_finds_missing_tls_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Report 4: `tls: {cert: nope.crt, key: nope.key}` passed check-config, then serve failed."""
    config = tmp_path / "c.yaml"
    config.write_text("tls: {cert: nope.crt, key: nope.key}\n")
    assert run(["check-config", "-c", str(config)], monkeypatch) == 1
    out, err = capsys.readouterr()
    assert "OK" not in out
    assert f"cannot read TLS certificate {tmp_path / 'nope.crt'}" in err


def test_check_config_finds_a_key_of_another_certificate(
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, _ = write_leaf(ca, tmp_path, "one")
    _, other_key = write_leaf(ca, tmp_path, "two")
    config = tls_config(tmp_path, {"cert": str(cert), "key": str(other_key)})
    assert run(["check-config", "-c", str(config)], monkeypatch) == 1
    assert "does not match certificate" in capsys.readouterr().err


def test_check_config_finds_an_expired_certificate_and_a_missing_client_ca(
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = datetime.now(UTC)
    cert, key = write_leaf(
        ca, tmp_path, "old", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    config = tls_config(
        tmp_path, {"cert": str(cert), "key": str(key), "client_ca": str(tmp_path / "no-ca.pem")}
    )
    assert run(["check-config", "-c", str(config)], monkeypatch) == 1
    err = capsys.readouterr().err
    assert f"TLS certificate {cert} expired at" in err
    assert f"cannot read TLS client CA {tmp_path / 'no-ca.pem'}" in err


def test_check_config_passes_good_tls_files(
    tls_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tls_config(tmp_path, {"cert": str(tls_files["cert"]), "key": str(tls_files["key"])})
    assert run(["check-config", "-c", str(config)], monkeypatch) == 0


# -c before or after the command's name ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "{config}", "user", "list", "--json"],
        ["--config", "{config}", "user", "list", "--json"],
        ["user", "-c", "{config}", "list", "--json"],
        ["user", "list", "--json", "-c", "{config}"],
        ["-c", "/nonexistent.yaml", "user", "list", "--json", "-c", "{config}"],  # the last wins
    ],
)
def test_config_option_anywhere(
    argv: list[str],
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Report 5: `sealroom -c dev.yaml status` failed with `invalid choice: 'dev.yaml'`."""
    capsys.readouterr()
    assert run([arg.format(config=config) for arg in argv], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out) == []


# new commands -----------------------------------------------------------------------------


def test_user_role_and_the_last_admin(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Report 9: no way to change a role; removing or disabling the last admin was allowed."""
    c = ["-c", str(config)]
    for name, extra in (("alice", ["--admin"]), ("bob", [])):
        argv = ["user", "add", name, "--password-stdin", *extra, *c]
        assert run(argv, monkeypatch, "a long password\n") == 0
    capsys.readouterr()
    for argv in (
        ["user", "role", "alice", "user"],
        ["user", "disable", "alice"],
        ["user", "remove", "alice"],
    ):
        assert run([*argv, *c], monkeypatch) == 1
        err = capsys.readouterr().err
        assert (
            err == "sealroom: alice is the only enabled admin; make another account an "
            "admin first\n"
        )
    assert run(["user", "role", "bob", "admin", *c], monkeypatch) == 0
    assert capsys.readouterr().out == "bob is now an admin\n"
    assert run(["user", "role", "alice", "user", *c], monkeypatch) == 0
    assert run(["user", "list", "--json", *c], monkeypatch) == 0
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [(r["name"], r["role"]) for r in rows] == [("alice", "user"), ("bob", "admin")]
    assert run(["user", "role", "nobody", "admin", *c], monkeypatch) == 1
    assert "no account nobody" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["user", "role", "bob", "root", *c], monkeypatch)


def test_role_change_ends_the_accounts_sessions(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: Server = make_server()
    server.add_user("root", admin=True)
    carol = server.user("carol", admin=True)
    assert run(["user", "role", "carol", "user", "-c", str(server.config)], monkeypatch) == 0
    assert carol.closed(timeout=3)[-1] == "BYE account-changed"
    again = server.user("carol")
    assert again.request("/wall hello").startswith("ERR forbidden")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_listen_picks_the_port(tls_files: dict[str, Path], tmp_path: Path) -> None:
    """Report 9: no way to pick the port without writing YAML."""
    config = write_config(
        tmp_path,
        {
            "tls": {"cert": str(tls_files["cert"]), "key": str(tls_files["key"])},
            "auth": {"argon2": CHEAP_ARGON2},
        },
    )
    port = free_port()
    env = {**os.environ, "SEALROOM_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "sealroom", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    reader = LineReader(process.stderr)
    try:
        reader.until(f"listening on 127.0.0.1:{port}", timeout=30)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader._thread.join(timeout=10)  # the pipe ends with the process
        process.stderr.close()
    bad = sealroom("serve", "--listen", "nowhere", env=env)
    assert "--listen" in one_line_error(bad)


def test_bare_sealroom_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """Report 10: `sealroom` alone printed only a usage line."""
    assert main([]) == 2
    err = capsys.readouterr().err
    for name in ("serve", "check-config", "user", "db", "reload", "sessions", "send"):
        assert f"    {name}" in err
    assert main(["user"]) == 2
    err = capsys.readouterr().err
    for name in ("add", "passwd", "role", "import"):
        assert f"    {name}" in err


# --help, examples and completion, from one parser ---------------------------------------------


def leaf_parsers(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield prefix, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_parsers(sub, (*prefix, name))


def test_every_command_has_examples_that_parse() -> None:
    parser = _build_parser()
    seen = 0
    for words, sub in leaf_parsers(parser):
        text = sub.format_help()
        assert "examples:" in text, words
        examples = [
            line.strip().split("  #")[0].strip()
            for line in text.split("examples:", 1)[1].splitlines()
            if line.strip()
        ]
        assert examples, words
        for example in examples:
            argv = shlex.split(example.split(" | ")[-1].split(" < ")[0].split(" > ")[0])
            if argv[0] == "source":
                continue
            assert argv[0] == "sealroom", example
            parsed = parser.parse_args(argv[1:])
            assert parsed.handler is sub.get_default("handler"), example
            seen += 1
    assert seen > 30


def test_bash_completion_comes_from_the_parser(tmp_path: Path) -> None:
    pytest.importorskip("shtab")
    done = sealroom("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for word in ("user", "role", "db", "sessions", "--new-ca", "--profile", "--password-stdin"):
        assert word in script
    bash = shutil.which("bash")
    assert bash is not None
    path = tmp_path / "sealroom.bash"
    path.write_text(script)
    # Source it and ask for the completions of `sealroom us` and `sealroom user r`.
    probe = (
        f"source {shlex.quote(str(path))}; "
        "COMP_WORDS=(sealroom us); COMP_CWORD=1; _shtab_sealroom; echo ${COMPREPLY[@]}; "
        "COMP_WORDS=(sealroom user r); COMP_CWORD=2; _shtab_sealroom; echo ${COMPREPLY[@]}"
    )
    shown = subprocess.run(
        [bash, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()
    assert shown == ["user", "remove role"]


# -- make run ------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_dev_admin_initialises_the_database_then_creates_the_admin(tmp_path: Path) -> None:
    """`make run`'s first-run step, with the real script and this checkout's sealroom."""
    wrapper = tmp_path / "sealroom"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m sealroom "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SEALROOM_CONFIG"}
    work = tmp_path / "checkout"
    work.mkdir()

    def dev_admin() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(ROOT / "scripts" / "dev-admin.sh"), str(wrapper)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = dev_admin()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("added admin account admin\nCreated account 'admin'")
    database = work / "var" / "sealroom.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    again = dev_admin()
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_make_run_port_picks_the_port_and_the_connect_line(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", "-C", str(ROOT), "run", "PORT=7555"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "-connect 127.0.0.1:7555" in done.stdout
    assert "serve --listen 127.0.0.1:7555" in done.stdout


def test_the_license_is_an_spdx_string() -> None:
    """Issue 13, report 7: `license = { text = "MIT" }` made setuptools print a 12-line
    deprecation banner on every install; PEP 639 wants an SPDX expression (setuptools 77+)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"]
    assert "shtab" in " ".join(project["project"]["dependencies"])
