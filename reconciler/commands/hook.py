"""`reconcile hook install|run`: Git hooks that validate pushes and apply the deploy branch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from reconciler.gitops import hooks


def register(sub: Any) -> None:
    p = sub.add_parser("hook", help="Git server hooks for the fleet repository")
    hook_sub = p.add_subparsers(dest="hook_command", metavar="ACTION", required=True)

    inst = hook_sub.add_parser("install", help="install the hooks into a bare repository")
    inst.add_argument("--repo", required=True, metavar="PATH.git")
    inst.add_argument("--path", default="", help="the fleet's folder inside the repository")
    _deploy_options(inst)
    inst.set_defaults(func=cmd_install)

    run = hook_sub.add_parser("run", help="(called by Git) run one hook")
    run.add_argument("hook", choices=["pre-receive", "post-receive"])
    run.add_argument("--repo", required=True)
    run.add_argument("--path", default="")
    _deploy_options(run)
    run.set_defaults(func=cmd_run)


def _deploy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--branch", default="main", help="the branch whose pushes are applied")
    p.add_argument(
        "--state",
        default=None,
        metavar="URL",
        help="state store for the post-receive hook (default: REPO/fleet-state/state.db; "
        "prefer $FLEET_STATE in the hook's environment for a postgresql:// URL with a password)",
    )
    p.add_argument("--hosts", default=None, metavar="SPEC", help="memory:PATH; default SSH")
    p.add_argument("--ssh-key", default=None, metavar="PATH")
    p.add_argument("--known-hosts", default=None, metavar="FILE")


def cmd_install(args: argparse.Namespace) -> int:
    written = hooks.install(
        args.repo,
        args.path,
        branch=args.branch,
        hosts=args.hosts,
        state=args.state,
        ssh_key=args.ssh_key,
        known_hosts=args.known_hosts,
    )
    for hook in written:
        print(f"installed {hook}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.hook == "pre-receive":
        return hooks.pre_receive(args.repo, args.path, sys.stdin, sys.stdout)
    from reconciler.gitops import deploy  # noqa: PLC0415 - keep pre-receive start-up light

    target = deploy.Target(
        repo=args.repo,
        subdir=args.path,
        hosts=args.hosts,
        ssh_key=args.ssh_key,
        known_hosts=args.known_hosts,
        state_url=args.state
        or os.environ.get("FLEET_STATE")
        or os.path.join(args.repo, "fleet-state", "state.db"),
        state_dir=args.repo,
    )
    return hooks.post_receive(target, args.branch, sys.stdin, sys.stdout)
