"""`reconcile`: the operator's command line. Thin: parse, call, print, exit code.

A :class:`~fleet.errors.FleetError` is printed as one line per problem on
stderr with exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import fleet
from fleet.errors import FleetError, ModelErrors
from reconciler.commands import gitops as gitops_commands
from reconciler.commands import history as history_commands
from reconciler.commands import hook as hook_commands
from reconciler.commands import hosts as hosts_commands
from reconciler.commands import lab as lab_commands
from reconciler.commands import model as model_commands
from reconciler.commands import plan as plan_commands

GROUPS = [
    model_commands,
    plan_commands,
    hosts_commands,
    lab_commands,
    hook_commands,
    gitops_commands,
    history_commands,
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reconcile", description="Declarative, Git-driven reconciler for a microVM fleet."
    )
    p.add_argument("--version", action="version", version=f"reconcile {fleet.__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser().print_help(sys.stderr)
        return 1
    try:
        code: int = args.func(args)
    except ModelErrors as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    except FleetError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
