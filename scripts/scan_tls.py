"""`make scan`: testssl.sh against a live `sealroom serve`, once per TLS profile.

For each profile this makes a fresh CA and server certificate with `sealroom certs init`,
starts `sealroom serve` on 127.0.0.1 (port 0; the port is read from its "listening on" log
line), runs testssl.sh with that CA added and the certificate's host name, and reads the
JSON report: the severities decide, not testssl's exit status. Any HIGH or CRITICAL finding
fails the scan, except the waivers below, each of which names a property of the throw-away
development certificate rather than of the server. Reports stay in var/scan/PROFILE/.

testssl.sh comes from Debian (`apt-get install testssl.sh`); as root this script installs it
when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml
from liveserver import Serve, sealroom

ROOT = Path(__file__).resolve().parent.parent
FAILING = ("HIGH", "CRITICAL")
WAIVERS = {
    "cert_revocation": (
        "the development certificate from `sealroom certs init` names no CRL or OCSP "
        "responder; certificates from a real PKI do. Not a server setting."
    ),
}


def ensure_testssl() -> str:
    for name in ("testssl", "testssl.sh"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing the Debian package testssl.sh", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "testssl.sh"], check=True, env=env)
        return ensure_testssl()
    sys.exit("testssl.sh is missing: sudo apt-get install testssl.sh")


def scan(profile: str, testssl: str, folder: Path) -> bool:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    certs = folder / "certs"
    sealroom("certs", "init", "--dir", str(certs))
    config = folder / "sealroom.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": ["127.0.0.1:0"],
                "tls": {
                    "cert": str(certs / "server.crt"),
                    "key": str(certs / "server.key"),
                    "profile": profile,
                },
                "storage": {"database": str(folder / "sealroom.db")},
                # The scanner is one address opening hundreds of connections in a burst.
                "limits": {"max_connections_per_ip": 1000},
                "rate": {"connections_per_ip": {"rate": 1000, "burst": 1000}},
            }
        )
    )
    server = Serve(config, folder / "serve.log")
    report = folder / "testssl.json"
    try:
        port = server.wait_ready()
        print(f"== {profile}: testssl.sh against localhost:{port}", flush=True)
        with (folder / "testssl.txt").open("w") as output:
            subprocess.run(
                [
                    testssl,
                    "--jsonfile",
                    str(report),
                    "--add-ca",
                    str(certs / "ca.crt"),
                    "--ip",
                    "127.0.0.1",
                    "--nodns",
                    "min",
                    "--warnings",
                    "off",
                    "--color",
                    "0",
                    f"localhost:{port}",  # the name in the certificate
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=1800,
                check=False,  # the JSON severities decide
            )
    finally:
        server.stop()
    return judge(profile, json.loads(report.read_text()))


def judge(profile: str, findings: list[dict[str, str]]) -> bool:
    counts = Counter(finding["severity"] for finding in findings)
    print(f"   severities: {dict(sorted(counts.items()))}")
    ok = True
    for finding in findings:
        if finding["severity"] not in FAILING:
            continue
        waiver = WAIVERS.get(finding["id"])
        state = f"waived: {waiver}" if waiver else "FAIL"
        ok = ok and waiver is not None
        print(f"   {finding['severity']} {finding['id']}: {finding['finding']} ({state})")
    for finding in findings:
        if finding["severity"] in ("MEDIUM", "LOW", "WARN"):
            print(f"   {finding['severity']} {finding['id']}: {finding['finding']}")
    print(f"== {profile}: {'pass' if ok else 'FAIL'}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["intermediate", "modern"])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "scan")
    args = parser.parse_args()
    testssl = ensure_testssl()
    results = [scan(profile, testssl, args.out / profile) for profile in args.profiles]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
