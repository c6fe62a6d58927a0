"""deploy/sealroom.service under a real systemd, booted as PID 1 in a container.

``systemd-nspawn --volatile=yes`` boots this machine's own /usr (Debian 12: systemd 252) on an
empty tmpfs root, to ``basic.target``, in about half a second. The project, its virtual
environment and the interpreter that environment was made from are bound in read-only at
their own paths; ``/opt/sealroom`` is linked to the environment, so the shipped unit runs
with its own ``ExecStart=``. The test's drop-in shortens the watchdog (2 s) and the restart
delay, imports the sources under test, logs how each run ended (``ExecStopPost=``), and, when
the interpreter lives under a home directory (pyenv under /root), turns ``ProtectHome=yes``
into ``read-only``: the service cannot start without reading its interpreter. Everything
else, the sandbox included, is the shipped unit. The configuration is deploy/sealroom.yaml
on a free loopback port; the container shares the host's network, so clients connect to
127.0.0.1.

Commands run inside with ``nsenter -t LEADER -a`` (LEADER: the container's PID 1 as seen from
here). Every wait is bounded; the container is powered off and reaped when the module ends.
Needs root (CI has it) and ``systemd-nspawn`` (``scripts/ensure-test-deps.sh``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import pytest
import trustme
import yaml

from helpers import Client
from opshelp import file_fingerprint, fingerprint, write_leaf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="booting systemd in a container needs root"),
]

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
VENV = Path(sys.prefix)
STAGE = "/srv/sealroom-test"  # the test's files, bound read-only into the container
WATCHDOG_S = 2
HOMES = (Path("/root"), Path("/home"), Path("/run/user"))
EXIT_LINE = 'echo "exit: $${SERVICE_RESULT} $${EXIT_CODE} $${EXIT_STATUS}"'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bound_paths() -> list[Path]:
    """What the service needs from this host beyond /usr: the tree under test, the virtual
    environment and the interpreter it was made from, at the paths they have here."""
    found: list[Path] = []
    for path in sorted({REPO, VENV, Path(sys.base_prefix).resolve()}, key=lambda p: len(p.parts)):
        if path.is_relative_to("/usr") or any(path.is_relative_to(p) for p in found):
            continue
        found.append(path)
    return found


class Machine:
    """A booted container: run commands in it, ask its systemd about sealroom.service."""

    def __init__(self, folder: Path, name: str, binds: list[str]) -> None:
        self.log = folder / "console.log"
        argv = [
            "systemd-nspawn",
            "-D",
            "/",
            "--volatile=yes",
            "--boot",
            "--register=no",
            "--keep-unit",
            "-M",
            name,
            "--console=pipe",
            *(f"--bind-ro={bind}" for bind in binds),
            "systemd.unit=basic.target",
            "systemd.firstboot=off",
            # It would fail on --console=pipe (no terminal to ask on) and degrade the boot.
            "systemd.mask=systemd-firstboot.service",
        ]
        with self.log.open("wb") as console:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        self.leader = 0

    def wait_booted(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.nspawn.poll() is None, f"systemd-nspawn exited: {self.console()}"
            assert time.monotonic() < deadline, f"no boot in {timeout}s: {self.console()}"
            self.leader = self.leader or self._find_leader()
            if self.leader:
                done = self.run("systemctl", "is-system-running", "--wait", check=False)
                if done.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.05)

    def _find_leader(self) -> int:
        """The container's PID 1: systemd-nspawn's child once it runs systemd."""
        pid = self.nspawn.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        except OSError:
            pass
        return 0

    def argv(self, *command: str) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a", *command]

    def run(
        self, *command: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*command), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode}: {done.stdout}{done.stderr}\n"
                f"{self.journal()}"
            )
        return done

    def show(self, *properties: str) -> dict[str, str]:
        argv = ["systemctl", "show", "sealroom", *(f"--property={p}" for p in properties)]
        lines = self.run(*argv).stdout.splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def journal(self) -> str:
        done = subprocess.run(
            self.argv("journalctl", "--no-pager", "-o", "short-precise", "-u", "sealroom"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return "journal of sealroom.service:\n" + done.stdout[-6000:]

    def console(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def poweroff(self) -> None:
        """SIGTERM asks systemd-nspawn for an orderly poweroff; SIGKILL if that hangs."""
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout=15)
        if self.nspawn.poll() is None:
            for pid in (self.leader, self.nspawn.pid):
                if pid:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.nspawn.wait(timeout=15)


class Sealroom:
    """The booted container with Sealroom installed as deploy/README.md says."""

    def __init__(self, machine: Machine, port: int, ca_file: Path, stage: Path) -> None:
        self.machine = machine
        self.port = port
        self.ca_file = ca_file
        self.first = file_fingerprint(stage / "first" / "fullchain.pem")
        self.renewed = file_fingerprint(stage / "renewed" / "fullchain.pem")

    def systemctl(self, *args: str, timeout: float = 30.0) -> None:
        self.machine.run("systemctl", *args, timeout=timeout)

    def served(self) -> str:
        """The fingerprint of the certificate a new connection is shown, at the first try."""
        return fingerprint(self.port, self.ca_file)

    def install_pair(self, lineage: str) -> None:
        """What the certbot hook does before it reloads: copy, then rename into place."""
        self.machine.run(
            "sh",
            "-ec",
            f"cd /etc/sealroom/tls\n"
            f"install -m 0640 -o root -g sealroom {STAGE}/{lineage}/fullchain.pem .c.new\n"
            f"install -m 0640 -o root -g sealroom {STAGE}/{lineage}/privkey.pem .k.new\n"
            "mv -f .k.new privkey.pem && mv -f .c.new fullchain.pem",
        )


def stage_files(stage: Path, ca: trustme.CA, port: int) -> None:
    for lineage in ("first", "renewed"):
        folder = stage / lineage
        folder.mkdir()
        cert, key = write_leaf(ca, folder, "leaf")
        cert.rename(folder / "fullchain.pem")
        key.rename(folder / "privkey.pem")
    # The shipped example, with its paths (state, runtime and configuration directories),
    # on a free loopback port, with a cheap hash and no metrics port to collide on.
    config = yaml.safe_load((DEPLOY / "sealroom.yaml").read_text())
    config["server_name"] = "localhost"
    config["listen"] = [f"127.0.0.1:{port}"]
    config["auth"]["argon2"] = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}
    config["metrics"] = {"listen": None}
    config["limits"]["shutdown_grace_s"] = 5
    config["rate"] = {"connections_per_ip": {"rate": 100, "burst": 100}}
    (stage / "sealroom.yaml").write_text(yaml.safe_dump(config))

    drop_in = [
        "[Service]",
        f"WatchdogSec={WATCHDOG_S}s",
        "RestartSec=200ms",
        # The sources under test, whatever the environment's editable install points at.
        f"Environment=PYTHONPATH={REPO / 'src'}",
        # As every server the other tests start: blocking work on the reactor thread raises.
        "Environment=SEALROOM_STRICT_BLOCKING=1",
        # How each run ended, in the journal (`systemctl show` forgets once the unit is
        # inactive and collected): e.g. "exit: success exited 0".
        f"ExecStopPost=/bin/sh -c '{EXIT_LINE}'",
    ]
    if any(path.is_relative_to(home) for path in bound_paths() for home in HOMES):
        drop_in.append("ProtectHome=read-only")  # the interpreter is under a home directory
    for path in bound_paths():
        # A checkout under /tmp (CI's, say) would vanish behind the service's private /tmp:
        # bind it back in, read only. The rest of the private /tmp stays private.
        if any(path.is_relative_to(tmp) for tmp in ("/tmp", "/var/tmp")):  # noqa: S108
            drop_in.append(f"BindReadOnlyPaths={path}")
    (stage / "test.conf").write_text("\n".join(drop_in) + "\n")


def setup_script() -> str:
    """deploy/README.md's installation, in the container (the /opt/sealroom venv is a link)."""
    traversable = sorted(
        {str(parent) for path in bound_paths() for parent in path.parents if parent != Path("/")}
    )
    return "\n".join(
        [
            f"install -D -m 0644 {DEPLOY}/sealroom.sysusers /etc/sysusers.d/sealroom.conf",
            "systemd-sysusers /etc/sysusers.d/sealroom.conf",
            "install -d -m 0755 /etc/sealroom",
            f"install -m 0644 {STAGE}/sealroom.yaml /etc/sealroom/sealroom.yaml",
            "install -d -m 0750 -o root -g sealroom /etc/sealroom/tls",
            f"install -m 0640 -o root -g sealroom {STAGE}/first/fullchain.pem "
            f"{STAGE}/first/privkey.pem /etc/sealroom/tls/",
            f"install -d -m 0755 /opt && ln -s {VENV} /opt/sealroom",
            # The service user must reach the bound paths (the container's /root is 0750).
            *(f"chmod o+x {parent}" for parent in traversable),
            f"install -m 0644 {DEPLOY}/sealroom.service /etc/systemd/system/",
            f"install -D -m 0644 {STAGE}/test.conf "
            "/etc/systemd/system/sealroom.service.d/test.conf",
            "systemctl daemon-reload",
        ]
    )


@pytest.fixture(scope="module")
def sealroom(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealroom]:
    assert (VENV / "bin" / "sealroom").exists(), f"no sealroom installed in {VENV}"
    folder = tmp_path_factory.mktemp("systemd")
    stage = folder / "stage"
    stage.mkdir()
    port = free_port()
    stage_files(stage, ca, port)
    ca_file = stage / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    binds = [*(str(path) for path in bound_paths()), f"{stage}:{STAGE}"]
    machine = Machine(folder, f"sealroom-test-{os.getpid()}", binds)
    try:
        machine.wait_booted()
        machine.run("sh", "-ec", setup_script())
        yield Sealroom(machine, port, ca_file, stage)
    finally:
        machine.poweroff()


def test_start_returns_once_ready_and_the_server_serves(sealroom: Sealroom) -> None:
    sealroom.systemctl("stop", "sealroom")
    sealroom.systemctl("start", "sealroom")
    # No retry: Type=notify, so `start` returned after READY=1, i.e. with every listener bound.
    with closing(Client(sealroom.port, sealroom.ca_file)) as client:
        assert client.hello.startswith("HELLO sealroom ")
        assert client.request("/ping up") == "OK ping up"
    state = sealroom.machine.show("ActiveState", "SubState", "StatusText")
    assert state["ActiveState"] == "active", sealroom.machine.journal()
    assert state["SubState"] == "running"
    assert re.fullmatch(r"\d+ connections, \d+ sessions, \d+ rooms", state["StatusText"])
    assert sealroom.served() == sealroom.first


def test_reload_blocks_until_the_server_has_reloaded(sealroom: Sealroom) -> None:
    machine = sealroom.machine
    sealroom.systemctl("start", "sealroom")
    pid = machine.main_pid()
    with closing(Client(sealroom.port, sealroom.ca_file)) as before:  # across both reloads
        # The certbot hook as operators run it: copy the renewed pair, `systemctl reload`.
        machine.run(
            "env",
            f"RENEWED_LINEAGE={STAGE}/renewed",
            "RENEWED_DOMAINS=localhost",
            "SEALROOM_DOMAIN=localhost",
            str(DEPLOY / "certbot-deploy-hook"),
        )
        assert sealroom.served() == sealroom.renewed  # at once: it returned after READY=1

        # A server slow to get to its SIGHUP (here: stopped) must still hold `systemctl
        # reload` until it has reloaded: `kill -HUP` alone returns once the signal is queued.
        sealroom.install_pair("first")
        machine.run("kill", "-STOP", str(pid))
        reload = subprocess.Popen(
            machine.argv("systemctl", "reload", "sealroom"), stdout=subprocess.DEVNULL
        )
        try:
            try:
                time.sleep(0.6)  # well inside the watchdog's 2 s
                assert reload.poll() is None, "systemctl reload returned before the reload"
            finally:
                machine.run("kill", "-CONT", str(pid))
            assert reload.wait(timeout=20) == 0
        finally:
            if reload.poll() is None:
                reload.kill()
                reload.wait(timeout=10)
        assert sealroom.served() == sealroom.first
        assert machine.main_pid() == pid  # reloaded in place, nobody dropped
        assert before.request("/ping still here") == "OK ping still here"
    assert "reloaded /etc/sealroom/sealroom.yaml" in machine.journal()


def test_a_hung_server_is_restarted_by_the_watchdog(sealroom: Sealroom) -> None:
    machine = sealroom.machine
    sealroom.systemctl("start", "sealroom")
    before = machine.show("MainPID", "NRestarts", "ActiveEnterTimestampMonotonic")
    # Healthy, it feeds the watchdog: running longer than WatchdogSec without a restart.
    active_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 - int(
        before["ActiveEnterTimestampMonotonic"]
    )
    time.sleep(max(0.0, WATCHDOG_S + 0.5 - active_us / 1e6))
    assert machine.show("MainPID", "NRestarts") == {
        "MainPID": before["MainPID"],
        "NRestarts": before["NRestarts"],
    }

    machine.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", "sealroom")
    deadline = time.monotonic() + WATCHDOG_S + 15
    while True:
        now = machine.show("MainPID", "NRestarts", "ActiveState", "SubState")
        if now["NRestarts"] != before["NRestarts"] and now["SubState"] == "running":
            break
        assert time.monotonic() < deadline, f"no restart: {now}\n{machine.journal()}"
        time.sleep(0.1)
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1
    assert now["MainPID"] != before["MainPID"]
    journal = machine.journal()
    assert f"Watchdog timeout (limit {WATCHDOG_S}s)" in journal
    assert "Failed with result 'watchdog'" in journal
    assert re.findall(r"exit: (\w+)", journal)[-1] == "watchdog"
    assert sealroom.served() in (sealroom.first, sealroom.renewed)  # serving again


PROBE = """
for dir in "$@"; do
    if (: > "$dir/.sealroom-probe") 2>/dev/null; then
        rm -f "$dir/.sealroom-probe"; echo "$dir writable"
    else
        echo "$dir refused"
    fi
done
test -e /proc/1 && echo "/proc/1 visible" || echo "/proc/1 hidden"
"""
# Paths in the service's mount namespace, not temporary files of this process.
WRITABLE = ["/var/lib/sealroom", "/run/sealroom", "/tmp", "/var/tmp", "/dev/shm"]  # noqa: S108
REFUSED = [
    "/",
    "/etc",
    "/etc/sealroom",
    "/etc/sealroom/tls",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
    "/opt",
    "/srv",
    "/run",
    "/run/systemd",
    "/dev",
    "/root",
    "/home",
    str(REPO),
    str(VENV),
]


READ_ONLY_MOUNTS = [
    "/",
    "/etc",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
    "/opt",
    "/srv",
    "/dev",
    "/root",
    "/home",
    str(REPO),
    str(VENV),
]


def mount_options(mountinfo: str, path: str) -> set[str]:
    """The options of the mount ``path`` is on: the longest mount point above it, the last
    (topmost) of those stacked there."""
    best, options = "", ""
    for line in mountinfo.splitlines():
        point, mount_opts = line.split()[4:6]
        if Path(path).is_relative_to(point) and len(point) >= len(best):
            best, options = point, mount_opts
    return set(options.split(","))


def test_the_sandbox_holds_at_run_time(sealroom: Sealroom) -> None:
    machine = sealroom.machine
    sealroom.systemctl("start", "sealroom")
    pid = machine.main_pid()
    status = dict(
        line.split(":\t", 1)
        for line in machine.run("cat", f"/proc/{pid}/status").stdout.splitlines()
        if ":\t" in line
    )
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, (key, status[key])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # filtered
    uid, gid = status["Uid"].split()[0], status["Gid"].split()[0]
    assert uid != "0"
    assert machine.run("id", "-u", "sealroom").stdout.strip() == uid

    # ProtectSystem=strict and friends: the mounts it sees are read-only, whoever writes.
    # (/etc/sealroom and /run are writable mounts, kept by ownership from the service user.)
    mountinfo = machine.run("cat", f"/proc/{pid}/mountinfo").stdout
    for path in READ_ONLY_MOUNTS:
        assert "ro" in mount_options(mountinfo, path), (path, mountinfo)
    for path in WRITABLE:
        assert "rw" in mount_options(mountinfo, path), (path, mountinfo)

    # Its own view of the file system (mount and user namespace), with its own credentials
    # and no capabilities: only the state and runtime directories and its private /tmp,
    # /var/tmp and /dev/shm take a file; no other user's process is visible.
    probe = machine.run(
        "nsenter", "-t", str(pid), "-m", "-U", "-S", uid, "-G", gid, "--",
        "sh", "-c", PROBE, "probe", *WRITABLE, *REFUSED,
    ).stdout.splitlines()  # fmt: skip
    assert probe == [
        *(f"{path} writable" for path in WRITABLE),
        *(f"{path} refused" for path in REFUSED),
        "/proc/1 hidden",
    ]
    # Private: the service's /tmp is not the machine's.
    private = "/tmp/.sealroom-private"  # noqa: S108 - in the container
    machine.run("nsenter", "-t", str(pid), "-m", "--", "touch", private)
    assert machine.run("test", "-e", private, check=False).returncode == 1


def test_stop_says_bye_and_exits_0(sealroom: Sealroom) -> None:
    machine = sealroom.machine
    sealroom.systemctl("start", "sealroom")
    with closing(Client(sealroom.port, sealroom.ca_file)) as client:
        assert client.request("/ping before stop") == "OK ping before stop"
        stop = subprocess.Popen(
            machine.argv("systemctl", "stop", "sealroom"), stdout=subprocess.DEVNULL
        )
        try:
            assert client.closed(timeout=20) == ["BYE shutting-down"]  # then it hangs up
            assert stop.wait(timeout=30) == 0
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait(timeout=10)
    assert machine.show("ActiveState") == {"ActiveState": "inactive"}
    journal = machine.journal()
    assert journal.rstrip().endswith("Stopped sealroom.service - Sealroom TLS message server.")
    last_exit = re.findall(r"exit: (.*)", journal)[-1]
    assert last_exit == "success exited 0", journal  # not killed: it exited, with 0
