"""Wall time of the README's queued sweep with `dvc queue start -j 1` against `-j 2`, on the smoke profile.

    .venv/bin/python bench/queued_sweep.py [--jobs 1 2] [--repo DIR]

With --repo, a clone already reproduced and committed instead, on its own profile: after a fresh-clone
`make demo` and `make setup-dev` (the bench imports the tests' helpers), `git add -A && git commit -m demo`,
then `--repo <clone> --jobs 2 1` times the demo profile.

One temp copy of the repo on the smoke profile (tests/dvc_helpers.smoke_copy), one `dvc repro` on the
default SQLite store, then per -j value a sweep of three experiments as the README queues them (a grid of
two train_paddle.lr values and one train_paddle.epochs experiment; each round its own values, so DVC's
run cache cannot serve a round from an earlier one), `dvc queue start -j N`, timed until `dvc queue status`
shows nothing Queued or Running. Prints each wall time, the -j 2 / -j 1 ratio and the machine's load.
Training dominates; on the smoke profile the fixed costs (DVC, imports, export, predict) weigh more than
on the demo one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dvc_helpers import dvc, git, smoke_copy

DEFAULT_STORE = {"MLFLOW_TRACKING_URI": ""}  # params' sqlite:///mlflow.db, whatever the shell exports


def sweep(repo: Path, jobs: int, round_number: int) -> tuple[float, str]:
    lrs = f"{0.001 + 0.0001 * round_number:.4f},{0.003 + 0.0001 * round_number:.4f}"
    dvc(repo, "exp", "run", "--queue", "-S", f"train_paddle.lr={lrs}")
    dvc(repo, "exp", "run", "--queue", "-n", f"q-ep-{round_number}", "-S", f"train_paddle.epochs={3 + round_number}")
    started = time.perf_counter()
    dvc(repo, "queue", "start", "-j", str(jobs), extra_env=DEFAULT_STORE)
    while re.search(r"\b(Queued|Running)\b", status := dvc(repo, "queue", "status").stdout):
        time.sleep(2)
    return time.perf_counter() - started, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repo",
        type=Path,
        help="a clone already reproduced and committed, on any profile (default: a smoke copy in a temp folder)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        repo = args.repo or smoke_copy(Path(temp) / "repo")
        if args.repo is None:
            started = time.perf_counter()
            dvc(repo, "repro", extra_env=DEFAULT_STORE)
            print(f"smoke dvc repro: {time.perf_counter() - started:.1f} s", flush=True)
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", "dvc repro")
        walls = {}
        try:
            for number, jobs in enumerate(args.jobs):
                walls[jobs], status = sweep(repo, jobs, number)
                done = status.count("Success")
                print(
                    f"-j {jobs}: 3 experiments in {walls[jobs]:.1f} s ({done} new Success in total, "
                    f"load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        finally:
            dvc(repo, "queue", "stop", "--kill", check=False)
        if 1 in walls and 2 in walls:
            print(f"-j 2 / -j 1 wall: {walls[2] / walls[1]:.2f}x")


if __name__ == "__main__":
    main()
