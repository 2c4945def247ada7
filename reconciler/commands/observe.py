"""`reconcile observe`: ask every host for its inventory; print or save the snapshot.

Its own module (not with plan/apply) so that `reconcile observe` imports the
transport and the fleet loader but not the planner, the renderer or the
state store: observing is the command run most often, by `watch` and by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fleet import load as fleet_load
from fleet import model
from reconciler import observe as observe_mod
from reconciler.commands import common
from reconciler.core import observed, snapfile
from reconciler.hosts import factory


def register(sub: Any) -> None:
    p = sub.add_parser("observe", help="ask every host for its inventory")
    common.add_fleet_options(p)
    add_hosts_option(p)
    p.add_argument("--save", metavar="FILE", help="write the snapshot (for plan --observed)")
    p.set_defaults(func=observe_cmd)


def add_hosts_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hosts",
        default=None,
        metavar="SPEC",
        help="host transport for development: memory:PATH (in-process hosts kept in PATH); "
        "default: $FLEET_HOSTS, else SSH",
    )


def host_factory(
    args: argparse.Namespace, dial_ahead: Iterable[model.Host] = ()
) -> factory.Factory:
    """The HostClient factory the command's options ask for (``--hosts``, keys, known hosts).

    ``dial_ahead``: the hosts the command will talk to right away; over SSH their
    connects start while the transport loads (:func:`factory.ssh_factory`).
    """
    return factory.from_option(
        args.hosts or os.environ.get("FLEET_HOSTS"),
        ssh_key=getattr(args, "ssh_key", None),
        known_hosts=getattr(args, "known_hosts", None),
        fleet_dir=getattr(args, "fleet", None),
        dial_ahead=dial_ahead,
    )


def observe_cmd(args: argparse.Namespace) -> int:
    loaded = fleet_load.load(args.fleet, args.ref, git_state=False)
    hosts = loaded.fleet.hosts.values()
    snap = observe_mod.observe_all(loaded.fleet, host_factory(args, dial_ahead=hosts))
    if args.save:
        Path(args.save).write_text(snapfile.dumps(snap))
    else:
        json.dump(observed.snapshot_to_json(snap), sys.stdout, indent=1, sort_keys=True)
        print()
    down = [h for h, o in sorted(snap.hosts.items()) if not o.reachable]
    for h in down:
        print(f"warning: host {h} not observed: {snap.hosts[h].error}", file=sys.stderr)
    return 0
