"""The ``tradeplane`` command: one entry point for every component and for newcomers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tradeplane import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tradeplane",
        description="A Kubernetes-native, operator-managed cryptocurrency exchange.",
    )
    parser.add_argument("--version", action="version", version=f"tradeplane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the matching engine on the standard workload and explain what happened",
    )
    demo.add_argument("--commands", type=int, default=200_000,
                      help="how many commands to generate (default: 200,000)")
    demo.add_argument("--seed", type=int, default=42, help="workload seed (default: 42)")
    demo.add_argument("--depth", type=int, default=5, help="book levels to show (default: 5)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from tradeplane.demo import run_demo

        if args.commands <= 0:
            parser.error("--commands must be positive")
        run_demo(args.commands, args.seed, args.depth, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
