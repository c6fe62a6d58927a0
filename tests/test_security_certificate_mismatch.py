"""Threat: with mutual TLS, someone with one user's certificate probes another's password.

The certificate's CN must equal the login name. A login as someone else fails at the cost of
a real check, and leaves that account untouched: not even its last-login time moves, so the
right password under the wrong certificate is not confirmed by any side effect.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from helpers import PASSWORD, Client, ServerFactory


def test_right_password_wrong_certificate_changes_nothing(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    path = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    server = make_server(tls={"client_ca": str(path)})
    server.add_user("alice")
    server.add_user("bob")
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ca.issue_cert("alice@example.test", common_name="alice").configure_cert(ctx)
    client = Client(server.port, server.ca_file, context=ctx)
    assert client.request(f"/login bob {PASSWORD}").startswith("ERR auth-failed")
    bob = server.app.store.get_account("bob")
    assert bob is not None
    assert bob.last_login is None
    assert client.request(f"/login alice {PASSWORD}").startswith("OK login alice")
    client.close()
