"""`python -m bench [--quick] [--repeat N] [--only NAME ...] [--skip PREFIX ...] [--json FILE]`.

A NAME may be shortened to any prefix that names one scenario (``idle``, ``hand``); a
PREFIX given to --skip may name several (``--skip cluster``: every cluster scenario).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import ssl
import sys
import time
from pathlib import Path

from bench import cluster
from bench.scenarios import QUICK, Sizes, median_of
from bench.scenarios import SCENARIOS as SINGLE_NODE

SCENARIOS = {**SINGLE_NODE, **cluster.SCENARIOS}


def resolve(name: str) -> str:
    """A scenario's name from itself or a prefix that names only it."""
    if name in SCENARIOS:
        return name
    matches = [full for full in SCENARIOS if full.startswith(name)]
    if len(matches) != 1:
        known = ", ".join(SCENARIOS)
        what = "ambiguous" if matches else "unknown"
        raise argparse.ArgumentTypeError(f"{what} scenario {name!r} (scenarios: {known})")
    return matches[0]


def skipped(prefix: str) -> list[str]:
    """Every scenario whose name starts with ``prefix`` (at least one)."""
    matches = [full for full in SCENARIOS if full.startswith(prefix)]
    if not matches:
        known = ", ".join(SCENARIOS)
        raise argparse.ArgumentTypeError(f"no scenario starts with {prefix!r} (scenarios: {known})")
    return matches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (median)")
    parser.add_argument("--only", nargs="*", type=resolve, help="scenarios (or prefixes)")
    parser.add_argument(
        "--skip", nargs="*", type=skipped, default=[], help="scenarios to leave out (prefixes)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    left_out = {name for names in args.skip for name in names}
    sizes = QUICK if args.quick else Sizes()
    results: dict[str, object] = {
        "machine": {
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "cpus": len(__import__("os").sched_getaffinity(0)),
            "platform": platform.platform(),
        },
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
    }
    for name in [n for n in args.only or list(SCENARIOS) if n not in left_out]:
        started = time.monotonic()
        runs = [SCENARIOS[name](sizes) for _ in range(args.repeat)]
        figures = median_of(runs)
        results[name] = figures
        print(f"{name} ({time.monotonic() - started:.0f}s)", file=sys.stderr)
        for key, value in figures.items():
            print(f"  {key:<44} {value}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
