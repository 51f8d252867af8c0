"""Run the dispatch model (`tests/unit/test_dispatch_model.py`) with many more examples than CI does.

    python ops/bench/model.py --examples 2000

Prints Hypothesis's statistics (examples run, how long they took) and exits with pytest's code;
a failure prints the shortest interleaving that broke an invariant. The examples count and what
it found go into docs/developers/dispatch.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="state machines to run (CI runs 200)")
    parser.add_argument("--steps", type=int, default=None, help="steps per state machine (default: the test's 40)")
    args = parser.parse_args()
    env = {**os.environ, "UKCANCEL_MODEL_EXAMPLES": str(args.examples)}
    if args.steps:
        env["UKCANCEL_MODEL_STEPS"] = str(args.steps)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
               "--hypothesis-show-statistics", "tests/unit/test_dispatch_model.py"]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
