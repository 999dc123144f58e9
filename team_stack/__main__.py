"""python -m team_stack up|down|status|doors [--dir .team] [--base-port N] [--users alice,bob]

doors: try an anonymous read and write on each of the running stack's ports (each must be refused)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from team_stack import doors
from team_stack.stack import DEFAULT_BASE_PORT, PORT_OFFSETS, Stack, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m team_stack", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status", "doors"))
    parser.add_argument("--dir", type=Path, default=Path(".team"), help="where the stack keeps its data")
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help=f"first of {len(PORT_OFFSETS)} local ports (default {DEFAULT_BASE_PORT}, or the one of the last up)",
    )
    parser.add_argument("--users", default="alice,bob", help="the team's MLflow and S3 accounts (first up only)")
    args = parser.parse_args(argv)
    try:
        stack = Stack(args.dir, base_port=args.base_port, users=[u for u in args.users.split(",") if u])
        if args.command == "up":
            stack.up()
        elif args.command == "down":
            stack.down()
        elif args.command == "doors":
            return 0 if doors.report(stack.folder, stack.ports) else 4
        else:
            return 0 if stack.status() else 3
    except StackError as err:
        print(f"team_stack: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
