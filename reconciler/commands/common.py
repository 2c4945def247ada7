"""Options shared by every `reconcile` subcommand (DESIGN.md, CLI contract)."""

from __future__ import annotations

import argparse
import os


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fleet",
        default=os.environ.get("FLEET_DIR", "."),
        metavar="DIR",
        help="fleet directory or Git repository (default: current directory, $FLEET_DIR)",
    )
    parser.add_argument(
        "--ref",
        default=None,
        metavar="REV",
        help="read the fleet at this Git commit instead of the work tree",
    )


def add_state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        default=os.environ.get("FLEET_STATE"),
        metavar="URL",
        help="state store: a SQLite path (default .fleet-state/state.db) or postgresql://...",
    )
    parser.add_argument(
        "--ssh-key",
        default=os.environ.get("FLEET_SSH_KEY"),
        metavar="PATH",
        help="SSH private key for the hosts (default: $FLEET_SSH_KEY or the SSH agent)",
    )
    parser.add_argument(
        "--known-hosts",
        default=None,
        metavar="FILE",
        help="pinned host keys besides those in Host documents (default: $FLEET_KNOWN_HOSTS, "
        "the lab's when it is up, else ~/.ssh/known_hosts)",
    )
