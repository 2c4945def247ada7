"""`reconcile hook install|run`: Git hooks that validate pushes before they land."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.gitops import hooks


def register(sub: Any) -> None:
    p = sub.add_parser("hook", help="Git server hooks for the fleet repository")
    hook_sub = p.add_subparsers(dest="hook_command", metavar="ACTION", required=True)

    inst = hook_sub.add_parser("install", help="install the hooks into a bare repository")
    inst.add_argument("--repo", required=True, metavar="PATH.git")
    inst.add_argument("--path", default="", help="the fleet's folder inside the repository")
    inst.set_defaults(func=cmd_install)

    run = hook_sub.add_parser("run", help="(called by Git) run one hook")
    run.add_argument("hook", choices=["pre-receive"])
    run.add_argument("--repo", required=True)
    run.add_argument("--path", default="")
    run.set_defaults(func=cmd_run)


def cmd_install(args: argparse.Namespace) -> int:
    hook = hooks.install(args.repo, args.path)
    print(f"installed {hook}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return hooks.pre_receive(args.repo, args.path, sys.stdin, sys.stdout)
