"""`reconcile`: the operator's command line. Thin: parse, call, print, exit code.

Startup is part of every command's latency (``reconcile observe`` runs in
loops and benchmarks), so only the module of the command asked for is
imported: :data:`COMMANDS` lists them all for ``--help`` without importing any.

A :class:`~fleet.errors.FleetError` is printed as one line per problem on
stderr with exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import fleet
from fleet.errors import FleetError, ModelErrors


@dataclass(frozen=True, slots=True)
class Command:
    """One `reconcile` subcommand in the table: where it lives, and its one-line help."""

    name: str
    module: str
    help: str


_C = "reconciler.commands."
# Every subcommand, in `--help` order. A command's module is imported only when
# that command runs (its `register(subparsers)` adds all of the module's
# commands, so a module's commands stay together here). The help strings must
# match the modules' own; tests/core/test_cli_lazy.py checks they do.
COMMANDS: tuple[Command, ...] = (
    Command("validate", _C + "model", "check the fleet's YAML; print every error"),
    Command("desired", _C + "model", "show the compiled desired world"),
    Command("plan", _C + "plan",
            "show what apply would change (exit 0 none, 2 changes, 1 error)"),
    Command("apply", _C + "plan", "apply a saved plan (or plan now and apply)"),
    Command("force-unlock", _C + "plan", "break the apply lock of a dead apply"),
    Command("observe", _C + "observe", "ask every host for its inventory"),
    Command("hosts", _C + "hosts", "manage the hosts themselves"),
    Command("lab", _C + "lab", "the local lab: namespace hosts on this machine"),
    Command("hook", _C + "hook", "Git server hooks for the fleet repository"),
    Command("watch", _C + "gitops", "fetch a branch, apply new commits, correct drift"),
    Command("status", _C + "gitops", "the GitOps conditions: Ready, Reconciling, Stalled"),
    Command("history", _C + "history", "past applies: commit, trigger, actions, outcome"),
    Command("rollback", _C + "history", "plan the fleet as it was at COMMIT, confirm, apply"),
)  # fmt: skip


def chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: the first word that is not an option.

    The top-level options take no values (``-h``, ``--version``, ``-v``), so
    this is the word argparse will take as COMMAND.
    """
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full arguments of the command ``argv`` names only.

    ``argv=None`` reads ``sys.argv``. Other commands are listed (for
    ``--help`` and for argparse's "invalid choice" message) without importing
    their modules.
    """
    name = chosen(sys.argv[1:] if argv is None else argv)
    module = next((c.module for c in COMMANDS if c.name == name), None)
    p = argparse.ArgumentParser(
        prog="reconcile", description="Declarative, Git-driven reconciler for a microVM fleet."
    )
    p.add_argument("--version", action="version", version=f"reconcile {fleet.__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    registered = False
    for command in COMMANDS:
        if command.module != module:
            sub.add_parser(command.name, help=command.help)
        elif not registered:  # the module adds all its commands, this one among them
            importlib.import_module(command.module).register(sub)
            registered = True
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser([]).print_help(sys.stderr)
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
