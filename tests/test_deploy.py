"""The files in deploy/: the unit's sandbox score, its required settings, the drop-in, the
example configuration, the scripts, and the server running with no W+X memory."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
import trustme

from helpers import Client
from opshelp import serve_process
from sealroom.config import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNIT = DEPLOY / "sealroom.service"
TARGET_EXPOSURE = 1.5


def directives(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file by key (a key may repeat), sections ignored."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_unit_scores_1_5_or_lower() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for sealroom\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= TARGET_EXPOSURE, done.stdout


def test_the_unit_has_what_the_issue_asks_for() -> None:
    unit = directives(UNIT)

    def one(key: str) -> str:
        assert len(unit.get(key, [])) == 1, key
        return unit[key][0]

    assert one("Type") == "notify"
    # RELOADING=1 from a control process before the signal: `systemctl reload` then waits
    # for the server's READY=1 (tests/test_systemd.py); hence NotifyAccess=exec, not main.
    assert unit["ExecReload"] == ["/bin/systemd-notify RELOADING=1", "/bin/kill -HUP $MAINPID"]
    assert one("NotifyAccess") == "exec"
    assert one("ExecStart").endswith("sealroom serve -c /etc/sealroom/sealroom.yaml")
    assert one("WatchdogSec") == "30s"
    assert one("User") == "sealroom"
    assert (one("StateDirectory"), one("ConfigurationDirectory"), one("RuntimeDirectory")) == (
        "sealroom",
        "sealroom",
        "sealroom",
    )
    assert int(one("LimitNOFILE")) >= 2 * 10000  # a socket and an eventfd per connection
    assert int(one("TasksMax")) > 10000  # a thread per connection
    assert one("UMask") == "0077"
    assert one("ProtectSystem") == "strict"
    assert one("CapabilityBoundingSet") == ""
    assert one("RestrictAddressFamilies") == "AF_INET AF_INET6 AF_UNIX"
    assert unit["SystemCallFilter"][0] == "@system-service"
    for key in (
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "NoNewPrivileges",
        "MemoryDenyWriteExecute",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "LockPersonality",
        "RestrictNamespaces",
        "RestrictRealtime",
    ):
        assert one(key) == "yes", key
    assert one("ProtectProc") == "invisible"


def test_the_low_port_drop_in_adds_one_capability_only() -> None:
    drop_in = directives(DEPLOY / "sealroom-lowport.conf")
    assert drop_in == {
        "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
        "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
        "PrivateUsers": ["no"],  # a capability in a private user namespace binds nothing
    }


def test_the_example_configuration_matches_the_unit() -> None:
    settings = load_settings(DEPLOY / "sealroom.yaml")
    assert settings.storage.database.parent == Path("/var/lib/sealroom")  # StateDirectory
    assert settings.control.socket == Path("/run/sealroom/control.sock")  # RuntimeDirectory
    assert settings.tls.cert.parent == Path("/etc/sealroom/tls")  # ConfigurationDirectory
    assert settings.metrics.listen is not None
    assert settings.metrics.listen.startswith("127.0.0.1:")
    assert settings.log.format == "text"


def test_sysusers_defines_the_unit_user() -> None:
    lines = [
        line.split()
        for line in (DEPLOY / "sealroom.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0][:3] == ["u", "sealroom", "-"]


@pytest.mark.parametrize("script", ["certbot-deploy-hook", "sealroom-admin"])
def test_the_scripts_parse(script: str) -> None:
    path = DEPLOY / script
    assert os.access(path, os.X_OK)
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)


def test_the_certbot_hook_reloads_the_service() -> None:
    text = (DEPLOY / "certbot-deploy-hook").read_text()
    assert "systemctl reload sealroom" in text
    assert text.index("mv -f") < text.index("systemctl reload")


# -- MemoryDenyWriteExecute: the whole stack under the kernel's own W^X rule ------------------

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
# Turn the rule on, prove it holds (a W+X mapping is refused), then become the server.
WRAPPER = f"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    raise SystemExit("prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    raise SystemExit("PR_SET_MDWE is not enforced")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _mdwe_supported() -> bool:
    """PR_SET_MDWE exists from Linux 6.3; ask (PR_GET_MDWE) without setting it here."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)


@pytest.mark.skipif(not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE")
def test_the_server_runs_without_writable_executable_memory(tmp_path: Path, ca: trustme.CA) -> None:
    """systemd's MemoryDenyWriteExecute=yes forbids W+X mappings. The kernel's PR_SET_MDWE
    enforces the same rule (inherited across exec), so the interpreter, OpenSSL, ctypes
    (the TLS groups call), cffi and argon2 all start and work under it."""
    with serve_process(ca, tmp_path, ("alice",), prefix=("-c", WRAPPER)) as served:
        with closing(Client(served.port, served.ca_file)) as client:
            client.login("alice")  # argon2 through cffi
            assert client.request("hello").startswith("OK say #lobby")
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=15) == 0
