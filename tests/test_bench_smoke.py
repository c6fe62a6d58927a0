"""Every benchmark scenario runs for about a second, so `make bench` keeps working.

Speed is never asserted here (machines are shared and noisy); only that each scenario
completes and its figures make sense: nothing lost, every client back, every figure there.
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
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
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
    assert results["idle_connections"]["connections"] > 0
    assert results["handshakes"]["resumed_fraction"] == 1.0
    storm = results["reconnect_storm"]
    assert storm["back"] == storm["accounts"]
    assert results["login_flood"]["chat_messages"] > 0
