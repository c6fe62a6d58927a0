"""A single node loads no cluster client: neither psycopg nor redis (SPEC.md section 4).

They are an optional extra (``sealroom[cluster]``); the SQLite server must run without them
installed, and must not pay for them when they are. Each check runs in a fresh interpreter,
since this one has loaded psycopg for the PostgreSQL tests. The second test is the control:
the same check sees psycopg as soon as the database is a PostgreSQL URL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import server_config, write_config

CLUSTER_CLIENTS = ("psycopg", "psycopg_pool", "psycopg_binary", "redis", "hiredis")

# Build and run a whole server (every module the CLI and `serve` import, a store open, the
# history writer running), then list which cluster clients got loaded.
PROBE = """
import json, sys
from pathlib import Path
import sealroom.cli.main
from sealroom.config import load_settings
from sealroom.ops.app import App
app = App(load_settings(Path(sys.argv[1])))
app.start()
app.store.add_account("alice", "hash")
app.writer.flush()
app.stop(grace_s=0.5)
clients = set(sys.argv[2:])
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in clients)))
"""


def cluster_modules_loaded(
    folder: Path, tls_files: dict[str, Path], extra: dict[str, Any]
) -> list[str]:
    config = write_config(folder, server_config(tls_files, extra))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config), *CLUSTER_CLIENTS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_a_single_node_imports_no_cluster_client(
    tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    extra = {"control": {"socket": str(tmp_path / "control.sock")}}
    assert cluster_modules_loaded(tmp_path, tls_files, extra) == []


def test_a_postgresql_database_does_import_psycopg(
    tmp_path: Path, tls_files: dict[str, Path], postgres_url: str
) -> None:
    extra = {"storage": {"database": postgres_url}, "control": {"socket": None}}
    loaded = cluster_modules_loaded(tmp_path, tls_files, extra)
    assert "psycopg" in loaded
    assert "psycopg_pool" in loaded
    assert "redis" not in loaded  # not until the cluster's bus needs it


def test_cluster_mode_imports_the_redis_client(
    tmp_path: Path, tls_files: dict[str, Path], postgres_url: str, redis_url: str
) -> None:
    extra = {
        "storage": {"database": postgres_url},
        "cluster": {"redis": redis_url},
        "control": {"socket": None},
    }
    loaded = cluster_modules_loaded(tmp_path, tls_files, extra)
    assert "redis" in loaded
    assert "sealroom" not in loaded  # (the probe lists only the clients' own packages)
