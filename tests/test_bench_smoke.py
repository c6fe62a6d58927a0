"""Every benchmark scenario runs for about a second, so `make bench` keeps working.

Speed is never asserted here (machines are shared and noisy); only that each scenario
completes and its figures make sense: nothing lost, every client back, every figure there.
Of the cluster scenarios (each starts PostgreSQL, Redis and two nodes) only the fan-out
runs here, tiny: a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--skip", "cluster", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for name in ("fanout_saturated", "fanout_saturated_no_history", "fanout_steady"):
        assert results[name]["lost"] == 0, results[name]
        assert results[name]["deliveries"] > 0
    # Where a steady message's time goes: before its first recipient, and across them.
    steady = results["fanout_steady"]
    assert 0 < steady["first_recipient_p50_ms"] <= steady["p99_ms"], steady
    assert steady["spread_p99_ms"] >= 0, steady
    # Timed by the kernel's receive stamps, not when the load generator got round to them;
    # and steady: one message a period apart (100 a second here), not bursts of several.
    assert steady["kernel_stamped"] > 0.5, steady
    assert steady["p50_ms"] <= steady["seen_p50_ms"], steady
    assert 5 <= steady["send_gap_p50_ms"] <= 15, steady
    idle = results["idle_connections"]
    assert idle["connections"] > 0
    # Each argon2 cost on its own server, the first logins of each at that cost.
    for label in ("argon2_8mib", "argon2_64mib"):
        assert idle[f"{label}_password_logins"] > 0, idle
        assert idle[f"{label}_threads"] > 0
        assert f"{label}_rss_kib_per_connection" in idle
    shakes = results["handshakes"]
    assert shakes["resumed_fraction"] == 1.0
    # Sealroom and the asyncio reference always; Mosquitto measured, or skipped with a note.
    assert isinstance(shakes["full_cpu_us"], int | float)
    assert isinstance(shakes["asyncio_full_cpu_us"], int | float)
    assert shakes["asyncio_full_per_s"] > 0
    mosquitto = shakes["mosquitto_full_cpu_us"]
    assert isinstance(mosquitto, int | float) or mosquitto.startswith("skipped"), mosquitto
    storm = results["reconnect_storm"]
    assert storm["back"] == storm["accounts"]
    assert results["login_flood"]["chat_messages"] > 0
    web = results["web"]
    for door in ("tls", "web"):
        assert web[f"{door}_lost"] == 0, web
        assert web[f"{door}_deliveries"] > 0
        assert web[f"{door}_cpu_us_per_delivery"] >= 0
    assert isinstance(web["web_over_tls_cpu"], int | float | str)


def test_bench_cluster_quick(tmp_path: Path) -> None:
    """Two nodes over a PostgreSQL and a Redis of the bench's own: nothing lost."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick"),
            *("--only", "cluster_fanout_saturated", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())["cluster_fanout_saturated"]
    assert "skipped" not in figures, figures  # `make test` installs the engines and extra
    assert figures["single_lost"] == 0, figures
    assert figures["lost"] == 0, figures
    assert figures["refused"] == 0, figures
    assert figures["deliveries"] == figures["single_deliveries"] > 0
    for part in ("node1", "node2", "redis", "postgres"):
        assert figures[f"cpu_s_{part}"] >= 0, figures
