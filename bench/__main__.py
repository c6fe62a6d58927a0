"""`python -m bench [--quick] [--repeat N] [--only NAME ...] [--json FILE]`.

A NAME may be shortened to any prefix that names one scenario (``idle``, ``hand``).
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

from bench.scenarios import QUICK, SCENARIOS, Sizes, median_of


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (median)")
    parser.add_argument("--only", nargs="*", type=resolve, help="scenarios (or prefixes)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
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
    for name in args.only or list(SCENARIOS):
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
