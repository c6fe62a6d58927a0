"""TLS compliance, judged by the scanner auditors use: sslyze against Mozilla's profiles.

The server runs with a certificate from our own ``sealroom certs init`` (trustme made the
certificates of every other test, so here our CA is what is checked); sslyze trusts that CA
(``--certinfo_ca_file``) and connects by the host name in the certificate. The ``intermediate``
profile must be compliant with Mozilla's intermediate configuration, ``modern`` with modern;
and, as a check on the check, the intermediate server must fail the modern test.

sslyze pins its own ``cryptography``, so it lives in ``.venv-sslyze`` (made by
``scripts/ensure-sslyze.sh``, which ``make test`` runs); without it this file is skipped.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from helpers import ServerFactory
from sealroom.cli.main import main as sealroom

SSLYZE = Path(__file__).resolve().parent.parent / ".venv-sslyze" / "bin" / "sslyze"

pytestmark = pytest.mark.skipif(
    not SSLYZE.exists(), reason="sslyze is not installed: run scripts/ensure-sslyze.sh"
)

# sslyze opens many connections at once; admission must not be what it measures.
SCANNER_LIMITS: dict[str, Any] = {
    "limits": {"max_connections_per_ip": 1000},
    "rate": {"connections_per_ip": {"rate": 1000, "burst": 1000}},
}


@pytest.fixture(scope="module")
def own_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    assert sealroom(["certs", "init", "--dir", str(folder)]) == 0
    return folder


def _dns_name(cert: Path) -> str:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(names.get_values_for_type(x509.DNSName)[0])


def _sslyze(
    make_server: ServerFactory, certs: Path, profile: str, mozilla_config: str, out: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    server = make_server(
        tls={
            "cert": str(certs / "server.crt"),
            "key": str(certs / "server.key"),
            "profile": profile,
        },
        **SCANNER_LIMITS,
    )
    host = _dns_name(certs / "server.crt")
    done = subprocess.run(
        [
            str(SSLYZE),
            f"--mozilla_config={mozilla_config}",
            "--certinfo_ca_file",
            str(certs / "ca.crt"),
            "--json_out",
            str(out),
            f"{host}:{server.port}{{127.0.0.1}}",  # the name to check, the address to use
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, json.loads(out.read_text())


def _scan_result(report: dict[str, Any]) -> dict[str, Any]:
    (result,) = report["server_scan_results"]
    assert result["scan_status"] == "COMPLETED", result
    scan: dict[str, Any] = result["scan_result"]
    return scan


def _check_certificate(scan: dict[str, Any], ca_file: Path, host: str) -> None:
    """Trusted through our CA, for the name we connected with."""
    info = scan["certificate_info"]["result"]
    assert info["hostname_used_for_server_name_indication"] == host
    for deployment in info["certificate_deployments"]:
        ours = [
            check
            for check in deployment["path_validation_results"]
            if Path(check["trust_store"]["path"]) == ca_file
        ]
        assert len(ours) == 1, ours
        assert ours[0]["was_validation_successful"], ours


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_profile_is_mozilla_compliant(
    make_server: ServerFactory, own_certs: Path, tmp_path: Path, profile: str
) -> None:
    done, report = _sslyze(make_server, own_certs, profile, profile, tmp_path / "sslyze.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "OK - Compliant." in done.stdout, done.stdout[-3000:]
    scan = _scan_result(report)
    _check_certificate(scan, own_certs / "ca.crt", _dns_name(own_certs / "server.crt"))
    reneg = scan["session_renegotiation"]["result"]
    assert not reneg["is_vulnerable_to_client_renegotiation_dos"]
    assert not scan["tls_compression"]["result"]["supports_compression"]
    assert not scan["heartbleed"]["result"]["is_vulnerable_to_heartbleed"]
    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert not scan[f"{old}_cipher_suites"]["result"]["accepted_cipher_suites"], old
    tls12 = scan["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]
    assert bool(tls12) == (profile == "intermediate")
    assert scan["tls_1_3_cipher_suites"]["result"]["accepted_cipher_suites"]


def test_scanner_notices_what_modern_forbids(
    make_server: ServerFactory, own_certs: Path, tmp_path: Path
) -> None:
    """The check of the check: the intermediate server (TLS 1.2 on) fails the modern test."""
    done, _report = _sslyze(make_server, own_certs, "intermediate", "modern", tmp_path / "s.json")
    assert done.returncode != 0
    assert "FAILED - Not compliant." in done.stdout
    assert "tls_versions" in done.stdout
