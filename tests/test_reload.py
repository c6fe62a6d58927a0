"""Reload (SIGHUP): new certificates and settings without dropping anyone; a broken file
changes nothing. Most cases run ``App.reload()`` in-process; one runs ``sealroom serve``."""

from __future__ import annotations

import signal
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from helpers import PASSWORD, Client, Server, ServerFactory, server_config, wait_until, write_config
from opshelp import captured_lines, file_fingerprint, fingerprint, serve_process, write_leaf
from sealroom.config import load_settings
from sealroom.ops.app import App


@pytest.fixture
def rotating(
    make_server: ServerFactory, ca: trustme.CA, tmp_path: Path
) -> tuple[Server, Path, Path]:
    """A server whose certificate files belong to this test, to be replaced."""
    folder = tmp_path / "tls"
    folder.mkdir()
    cert, key = write_leaf(ca, folder, "server")
    return make_server(tls={"cert": str(cert), "key": str(key)}), cert, key


def edit_config(server: Server, **changes: Any) -> None:
    data = yaml.safe_load(server.config.read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    server.config.write_text(yaml.safe_dump(data))


def test_new_certificate_for_new_connections_old_session_keeps_chatting(
    rotating: tuple[Server, Path, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    server, cert, _key = rotating
    old = fingerprint(server.port, server.ca_file)
    alice = server.user("alice")
    write_leaf(ca, cert.parent, "server")  # same paths, new certificate and key
    assert file_fingerprint(cert) != old

    assert server.app.reload()
    assert fingerprint(server.port, server.ca_file) == file_fingerprint(cert)
    bob = server.user("bob")
    assert bob.request("hello alice").startswith("OK say #lobby")
    assert next_message(alice) == "MSG #lobby bob hello alice"
    assert alice.request("hi bob").startswith("OK say #lobby")
    assert next_message(bob) == "MSG #lobby alice hi bob"
    assert server.app.reloads == {"ok": 1, "failed": 0}


def next_message(client: Client) -> str:
    """The next MSG line, past JOIN and PART events."""
    while not (line := client.line()).startswith("MSG "):
        pass
    return line


def _expired(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    now = datetime.now(UTC)
    return write_leaf(
        ca, folder, "expired", not_before=now - timedelta(days=10), not_after=now - timedelta(1)
    )


def _future(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    now = datetime.now(UTC)
    return write_leaf(
        ca, folder, "future", not_before=now + timedelta(days=1), not_after=now + timedelta(9)
    )


def _wrong_key(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    cert, _ = write_leaf(ca, folder, "one")
    _, key = write_leaf(ca, folder, "two")
    return cert, key


def _missing(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    return folder / "nothing.crt", folder / "nothing.key"


def _garbage(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    cert, key = write_leaf(ca, folder, "garbage")
    cert.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return cert, key


@pytest.mark.parametrize(
    ("make_files", "problem"),
    [
        (_expired, "expired at"),
        (_future, "is not valid before"),
        (_wrong_key, "does not match"),
        (_missing, "cannot read TLS certificate"),
        (_garbage, "holds no valid PEM certificate"),
    ],
    ids=["expired", "not-yet-valid", "wrong-key", "missing", "garbage"],
)
def test_a_broken_certificate_changes_nothing(
    rotating: tuple[Server, Path, Path],
    ca: trustme.CA,
    tmp_path: Path,
    make_files: Any,
    problem: str,
) -> None:
    server, _cert, _key = rotating
    served = fingerprint(server.port, server.ca_file)
    alice = server.user("alice")
    settings = server.app.settings
    new_cert, new_key = make_files(ca, tmp_path)
    edit_config(server, tls__cert=str(new_cert), tls__key=str(new_key), server_name="renamed")
    with captured_lines() as logs:
        assert not server.app.reload()
    refusal = logs.wait_for("reload refused")
    assert problem in refusal
    assert refusal.startswith("ERROR")
    assert server.app.settings is settings  # all or nothing: not even server_name changed
    assert fingerprint(server.port, server.ca_file) == served
    assert "renamed" not in server.client().hello
    assert alice.request("/ping alive") == "OK ping alive"
    assert server.app.reloads == {"ok": 0, "failed": 1}
    assert server.app.last_reload is not None
    assert problem in (server.app.last_reload[1] or "")


def test_a_broken_configuration_changes_nothing(rotating: tuple[Server, Path, Path]) -> None:
    server, _cert, _key = rotating
    settings = server.app.settings
    server.config.write_text("limits: {max_connections: -1}\nnonsense: [\n")
    with captured_lines() as logs:
        assert not server.app.reload()
    refusal = logs.wait_for("reload refused")
    assert "invalid YAML" in refusal
    assert refusal.count(str(server.config)) == 1  # issue 13, report 10: it was named twice
    server.config.write_text("limits: {max_connections: -1}\n")
    with captured_lines() as logs:
        assert not server.app.reload()
    refusal = logs.wait_for("reload refused")
    assert f"configuration {server.config}: limits.max_connections" in refusal
    assert refusal.count(str(server.config)) == 1
    assert server.app.settings is settings
    server.client().close()  # still serving


def test_limits_apply_without_dropping_anyone(rotating: tuple[Server, Path, Path]) -> None:
    server, _cert, _key = rotating
    alice = server.user("alice")
    carol = server.user("carol")
    edit_config(
        server,
        limits__max_connections_per_ip=2,
        limits__max_rooms_per_session=1,
        limits__max_line_bytes=128,
        rate__logins_per_ip={"rate": 0.01, "burst": 1},
        server_name="renamed.example",
    )
    assert server.app.reload()
    # Admission: two connections are open from this address, a third is turned away.
    with pytest.raises((EOFError, ConnectionError, OSError)):
        server.client().request("/ping")
    assert server.app.shared.admission.rejected["per_address"] == 1
    # Room limits are shared: they bind existing sessions at once.
    assert alice.request("/join #tea").startswith("ERR forbidden")
    # Per-connection bounds stay as they were for sessions already open.
    assert alice.request("/ping " + "x" * 200) == "OK ping " + "x" * 200
    carol.close()
    # Once the server has seen carol go (admission releases her slot on close)...
    wait_until(lambda: len(server.app.shared.registry) == 1, what="carol's connection closed")
    # ... a new connection gets the new name and the new line limit.
    dave = server.client()
    assert "renamed.example" in dave.hello
    assert dave.request("/ping " + "x" * 200).startswith("ERR line-too-long")
    # The login bucket took the new burst: one attempt, then refused.
    assert dave.request(f"/login dave {PASSWORD}").startswith("ERR auth-failed")
    assert dave.request(f"/login dave {PASSWORD}").startswith("ERR rate-limited")


def test_restart_only_settings_are_reported_and_kept(rotating: tuple[Server, Path, Path]) -> None:
    server, _cert, _key = rotating
    running = server.app.settings
    edit_config(
        server,
        listen=["127.0.0.1:1"],
        storage__database="elsewhere.db",
        auth__max_concurrent_verifications=9,
        cluster__trusted_proxies=["127.0.0.1"],
        history__max_query=7,
    )
    with captured_lines() as logs:
        assert server.app.reload()
    for key in ("listen", "storage", "auth", "cluster"):
        logs.wait_for(f"{key} changed; it takes effect only after a restart")
    settings = server.app.settings
    assert (settings.listen, settings.storage, settings.auth, settings.cluster) == (
        running.listen,
        running.storage,
        running.auth,
        running.cluster,
    )
    assert settings.history.max_query == 7
    assert server.app.shared.services.settings is settings


# -- the real thing: `sealroom serve`, SIGHUP, and the notify socket ---------------------------


def test_sighup_rotates_the_certificate_of_a_running_server(ca: trustme.CA, tmp_path: Path) -> None:
    with serve_process(ca, tmp_path, ("alice", "bob")) as served:
        notify, log, cert = served.notify, served.log, served.cert
        assert fingerprint(served.port, served.ca_file) == file_fingerprint(cert)
        with closing(Client(served.port, served.ca_file)) as alice:
            alice.login("alice")

            write_leaf(ca, tmp_path, "server")
            rotated = file_fingerprint(cert)
            served.process.send_signal(signal.SIGHUP)
            notify.until("RELOADING")
            notify.until("READY")
            log.until("reloaded .*valid until")
            assert fingerprint(served.port, served.ca_file) == rotated
            with closing(Client(served.port, served.ca_file)) as bob:
                bob.login("bob")
                assert bob.request("hello from the new certificate").startswith("OK say")
                assert next_message(alice) == "MSG #lobby bob hello from the new certificate"

                cert.write_text("not a certificate\n")
                served.process.send_signal(signal.SIGHUP)
                notify.until("RELOADING")
                notify.until("READY")
                log.until(r"ERROR .*reload refused: TLS certificate .* holds no valid PEM")
                assert fingerprint(served.port, served.ca_file) == rotated
                assert alice.request("still here").startswith("OK say")
                assert next_message(bob) == "MSG #lobby alice still here"

        served.process.send_signal(signal.SIGTERM)
        notify.until("STOPPING")
        assert served.process.wait(timeout=15) == 0


def test_listen_from_the_command_line_is_not_a_change(
    tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """`serve --listen ADDR` (issue 13): the file's listen differs, and a reload must not
    report it as a change waiting for a restart, nor drop the address served."""
    config = write_config(tmp_path, server_config(tls_files, {"listen": ["127.0.0.1:9"]}))
    app = App(load_settings(config), listen=["127.0.0.1:0"])
    try:
        app.start()
        assert app.addresses[0].startswith("127.0.0.1:")
        assert app.addresses[0] != "127.0.0.1:9"
        with captured_lines() as logs:
            assert app.reload()
            logs.wait_for("reloaded")
        assert not [line for line in logs.lines if "only after a restart" in line]
        assert app.settings.listen == ("127.0.0.1:0",)
    finally:
        app.stop(grace_s=1.0)
