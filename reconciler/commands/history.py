"""`reconcile history` and `reconcile rollback`: what was applied, and going back to it.

A rollback is not a ``git revert``: it loads the fleet as it was at an earlier
commit, plans it against the hosts as they are now, shows the plan, asks, and
applies it. The branch keeps moving forward; the next push or watch cycle
applies the branch again (stop the watcher first to keep a rollback in place).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fleet.errors import FleetError
from reconciler.commands import common
from reconciler.core import plan as P
from reconciler.hosts import protocol
from reconciler.state import base


def register(sub: Any) -> None:
    p = sub.add_parser("history", help="past applies: commit, trigger, actions, outcome")
    p.add_argument("--limit", type=int, default=20, metavar="N")
    p.add_argument("--show", metavar="APPLY_ID", help="the full record of one apply (prefix)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    common.add_fleet_options(p)
    common.add_state_options(p)
    p.set_defaults(func=history_cmd)

    p = sub.add_parser("rollback", help="plan the fleet as it was at COMMIT, confirm, apply")
    p.add_argument("--to", required=True, metavar="COMMIT")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--hosts", default=None, metavar="SPEC", help="memory:PATH; default SSH")
    common.add_fleet_options(p)
    common.add_state_options(p)
    p.set_defaults(func=rollback_cmd)


def history_cmd(args: argparse.Namespace) -> int:
    state = base.open_state(args.state, args.fleet)
    try:
        records = state.history(limit=10_000 if args.show else args.limit)
    finally:
        state.close()
    if args.show:
        found = [r for r in records if str(r["apply_id"]).startswith(args.show)]
        if len(found) != 1:
            raise FleetError(f"{len(found)} applies match {args.show!r}; give more of the id")
        json.dump(found[0], sys.stdout, indent=1, sort_keys=True, default=str)
        print()
        return 0
    if args.format == "json":
        json.dump(records, sys.stdout, indent=1, sort_keys=True, default=str)
        print()
        return 0
    if not records:
        print("No applies recorded yet.")
    for r in records:
        commit = (r["fleet_commit"] or "no commit")[:12]
        outcome = r["outcome"] or "running or interrupted"
        print(f"{r['started_at']}  {str(r['apply_id'])[:12]}  {commit}  {outcome}  {r['trigger']}")
        counts = ", ".join(f"{v} {k}" for k, v in sorted((r["summary"] or {}).items()) if v)
        print(f"    {counts or 'no changes'}; {len(r['actions'] or [])} action(s)")
        for action in (r["actions"] or [])[:5]:
            print(f"      {action}")
        if len(r["actions"] or []) > 5:
            print(f"      ... (reconcile history --show {str(r['apply_id'])[:12]})")
    return 0


def rollback_cmd(args: argparse.Namespace) -> int:
    from reconciler.gitops import deploy  # noqa: PLC0415 - start-up of the other commands

    target = deploy.Target(
        repo=args.fleet,
        subdir="",
        hosts=args.hosts or os.environ.get("FLEET_HOSTS"),
        ssh_key=args.ssh_key,
        known_hosts=args.known_hosts,
        state_url=args.state,
        state_dir=args.fleet,
    )

    def confirm(plan: P.Plan) -> bool:
        if args.yes:
            return True
        answer = input(f"Roll the fleet back to {args.to}? Only 'yes' is accepted: ")
        return answer.strip() == "yes"

    def on_event(host: str, event: protocol.Event) -> None:
        print(f"  {host}: {event.action}: {event.type} {event.message}".rstrip(), flush=True)

    result = deploy.reconcile(
        target,
        args.to,
        trigger=f"rollback to {args.to} by {base.me()[0]}",
        say=lambda line: print(line, flush=True),
        on_event=on_event,
        confirm=confirm,
    )
    if result.message == "cancelled":
        print("Rollback cancelled.")
        return 1
    return 0 if result.ok else 1
