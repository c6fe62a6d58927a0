"""The control socket: ``sealroom status [--json]``, ``sealroom kick``, and who may ask;
plus ``sealroom argon2-timing``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpers import Server, ServerFactory
from opshelp import captured_lines, pristine_sealroom_logger
from sealroom.cli.main import main
from sealroom.core.errors import UserError
from sealroom.ops.control import ControlServer, request


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    with pristine_sealroom_logger():
        yield


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_json_counts_what_happens(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server(rate={"messages": {"rate": 0.001, "burst": 1}})
    alice = server.user("alice")
    bob = server.user("bob")
    assert bob.request("/join #tea").startswith("OK join")
    assert bob.request("/ping").startswith("ERR rate-limited")
    wrong = server.client()
    assert wrong.request("/login alice not the password").startswith("ERR auth-failed")

    code, out, err = cli(capsys, "status", "--json", "-c", str(server.config))
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["server"]["listeners"] == [f"127.0.0.1:{server.port}"]
    assert report["server"]["pid"] == os.getpid()
    assert report["server"]["control"] == str(server.config.parent / "var" / "sealroom.sock")
    assert report["server"]["uptime_s"] >= 0
    assert (report["connections"], report["sessions"], report["rooms"]) == (3, 2, 2)
    assert report["logins"] == {"ok": 2, "failed": 1}
    assert report["rejected"]["rate.messages"] == 1
    assert report["rejected"]["limits.max_connections"] == 0
    assert set(report["queues"]) == {
        "outbox_bytes",
        "outbox_bytes_max",
        "history_writer_lag",
        "argon2_waiting",
    }
    assert report["handshake_failures"] == 0
    assert report["tls"]["certificate_expires"].endswith("Z")
    assert report["reload"]["last"] is None
    for client in (alice, bob, wrong):
        client.close()


def test_status_text(make_server: ServerFactory, capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server()
    server.user("alice")
    server.app.reload()
    code, out, _ = cli(capsys, "status", "-c", str(server.config))
    assert code == 0
    assert f"listening on 127.0.0.1:{server.port}" in out
    assert "connections 1, sessions 1, rooms 1" in out
    assert "reloads: 1 ok, 0 failed" in out
    assert "rejected by limits: none" in out


def test_kick_closes_every_session_of_an_account(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server()
    bob1, bob2 = server.user("bob"), server.user("bob")
    alice = server.user("alice")
    code, out, _ = cli(capsys, "kick", "Bob", "--reason", "take a break", "-c", str(server.config))
    assert code == 0
    assert out.strip() == "kicked bob (2 sessions closed)"
    for bob in (bob1, bob2):
        assert bob.closed()[-1] == "BYE kicked by operator: take a break"
    assert alice.request("/ping") == "OK ping"

    code, out, _ = cli(capsys, "kick", "alice", "-c", str(server.config))
    # Issue 13, report 10: it said "1 sessions closed".
    assert (code, out.strip()) == (0, "kicked alice (1 session closed)")
    assert alice.closed()[-1] == "BYE kicked"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kick", "nobody"], "no account nobody"),
        (["kick", "b@d"], "invalid user name"),
        (["kick", "alice", "--reason", "bell\x07"], "control characters"),
        (["kick", "alice", "--reason", "x" * 201], "at most 200"),
    ],
)
def test_kick_refusals_are_one_line(
    make_server: ServerFactory,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    server = make_server()
    server.add_user("alice")
    code, out, err = cli(capsys, *argv, "-c", str(server.config))
    assert code == 1
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


def test_the_socket_is_private(make_server: ServerFactory) -> None:
    server = make_server()
    control = server.app.control
    assert control is not None
    mode = control.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert [p.name for p in control.path.parent.iterdir()] == ["sealroom.sock"]  # no leftovers
    server.app.stop(grace_s=1.0)
    assert not control.path.exists()


def _ask_as_nobody(path: Path) -> str:
    """Ask for status from a forked child running as uid 65534; what it got back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain system calls only, then _exit
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                try:
                    sock.connect(str(path))
                except PermissionError:
                    answer = b"denied by mode"
                else:
                    try:
                        sock.sendall(b'{"command": "status"}\n')
                        answer = b"reply: " + sock.recv(100)
                    except ConnectionError:  # closed unread: a reset instead of EOF
                        answer = b"reply: "
            os.write(write_end, answer)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_other_users_are_refused(make_server: ServerFactory) -> None:
    # A folder others may enter (pytest's are private), so the socket's own mode is tested.
    folder = Path(tempfile.mkdtemp(prefix="sealroom-control-"))
    folder.chmod(0o755)
    try:
        server = make_server(control={"socket": str(folder / "control.sock")})
        _check_refusals(server)
    finally:
        shutil.rmtree(folder)


def _check_refusals(server: Server) -> None:
    control = server.app.control
    assert control is not None
    assert _ask_as_nobody(control.path) == "denied by mode"
    control.path.chmod(0o666)  # even with the file open to all, peer credentials decide
    with captured_lines() as logs:
        assert _ask_as_nobody(control.path) == "reply: "
    logs.wait_for("refused a client running as uid 65534")


def test_a_stale_socket_is_replaced_and_a_live_one_is_not_stolen(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "run" / "control.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(path))  # bound, never listening: like a crashed server's socket
    server = make_server(control={"socket": str(path)})
    assert request(path, {"command": "status"})["ok"]
    with pytest.raises(UserError, match="another server is running"):
        make_server(control={"socket": str(path)})
    assert request(path, {"command": "status"})["sessions"] == 0  # the first still answers
    server.app.stop(grace_s=1.0)


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("mine")
    with pytest.raises(UserError, match="exists and is not a socket"):
        ControlServer(path, {})
    assert path.read_text() == "mine"


def test_a_too_long_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="too long for a Unix socket"):
        ControlServer(tmp_path / ("x" * 120), {})


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json\n", "a request is a JSON object"),
        (b"[1, 2]\n", "a request is a JSON object"),
        (b'{"command": "reboot"}\n', "unknown command"),
        (b'{"command": "kick"}\n', "a user name is"),
        (b"{" + b" " * 5000 + b"}\n", "at most 4 KiB"),
    ],
)
def test_bad_requests_get_an_error(make_server: ServerFactory, raw: bytes, error: str) -> None:
    server = make_server()
    assert server.app.control is not None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(server.app.control.path))
        sock.sendall(raw)
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"] is False
    assert error in reply["error"]


def test_status_when_no_server_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sealroom.yaml"
    config.write_text("{}\n")
    code, _, err = cli(capsys, "status", "-c", str(config))
    assert code == 1
    assert "is the server running?" in err
    config.write_text("control: {socket: null}\n")
    code, _, err = cli(capsys, "status", "-c", str(config))
    assert code == 1
    assert "control socket is turned off" in err


def test_no_control_socket_when_turned_off(make_server: ServerFactory) -> None:
    server = make_server(control={"socket": None})
    assert server.app.control is None
    assert not (server.config.parent / "var" / "sealroom.sock").exists()


def test_argon2_timing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sealroom.yaml"
    config.write_text(
        "auth:\n  argon2: {time_cost: 1, memory_cost_kib: 8, parallelism: 1}\n"
        "  max_concurrent_verifications: 4\n"
    )
    code, out, _ = cli(capsys, "argon2-timing", "--rounds", "3", "-c", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "argon2id time_cost=1 memory_cost_kib=8 parallelism=1"
    assert lines[1].startswith("one hash: ")
    assert "(median of 3," in lines[1]
    assert "max_concurrent_verifications=4: at most 0 MiB" in lines[2]
    assert "under 100 ms" in lines[3]  # such cheap parameters are flagged


# -- sealroom reload and sealroom sessions (issue 13, report 9) -----------------------------------


def test_reload_through_the_control_socket(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reloading took `kill -HUP $(pidof …)`; now `sealroom reload`, which waits for it."""
    server = make_server()
    alice = server.user("alice")
    code, out, err = cli(capsys, "reload", "-c", str(server.config))
    assert (code, err) == (0, "")
    assert out.startswith(f"reloaded {server.config}; TLS certificate valid until ")
    assert server.app.reloads == {"ok": 1, "failed": 0}
    assert alice.request("/ping") == "OK ping"

    missing = server.config.parent / "missing.crt"
    server.config.write_text(
        server.config.read_text().replace(str(server.app.settings.tls.cert), str(missing))
    )
    code, out, err = cli(capsys, "reload", "-c", str(server.config))
    assert (code, out) == (1, "")
    assert err == (
        f"sealroom: reload refused: cannot read TLS certificate {missing}: "
        "No such file or directory\n"
    )
    assert err.count("\n") == 1
    assert server.app.reloads == {"ok": 1, "failed": 1}


def test_sessions_lists_who_is_connected(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server()
    alice = server.user("alice")
    assert alice.request("/join #tea").startswith("OK join")
    bob = server.user("bob")
    server.client()  # connected, not logged in: not a session
    code, out, err = cli(capsys, "sessions", "--json", "-c", str(server.config))
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert [(r["user"], r["address"], r["rooms"]) for r in rows] == [
        ("alice", "127.0.0.1", ["#lobby", "#tea"]),
        ("bob", "127.0.0.1", ["#lobby"]),
    ]
    for row in rows:
        since = datetime.fromisoformat(row["connected_since"].replace("Z", "+00:00"))
        assert timedelta(0) <= datetime.now(UTC) - since < timedelta(minutes=1)

    code, out, _ = cli(capsys, "sessions", "-c", str(server.config))
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["USER", "ADDRESS", "CONNECTED", "SINCE", "ROOMS"]
    assert lines[0].split()[0] == "alice"
    assert lines[0].endswith("#lobby #tea")
    bob.close()


def test_reload_and_sessions_without_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sealroom.yaml"
    config.write_text("control: {socket: ctl.sock}\n")
    for command in ("reload", "sessions"):
        code, out, err = cli(capsys, command, "-c", str(config))
        assert (code, out) == (1, "")
        assert "is the server running?" in err
        assert err.count("\n") == 1
