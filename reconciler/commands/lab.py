"""`reconcile lab up|status|down|exec`: the local lab on this machine."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from fleet import load as fleet_load
from reconciler.commands import common
from reconciler.lab import lab, topology


def register(sub: Any) -> None:
    p = sub.add_parser("lab", help="the local lab: namespace hosts on this machine")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = lab_sub.add_parser("up", help="build the hosts and regions of the fleet as namespaces")
    common.add_fleet_options(up)
    _dir(up)
    up.set_defaults(func=cmd_up)

    status = lab_sub.add_parser("status", help="show what is up")
    _dir(status)
    status.add_argument("--format", choices=["text", "json"], default="text")
    status.set_defaults(func=cmd_status)

    down = lab_sub.add_parser("down", help="remove everything the lab made (idempotent)")
    _dir(down)
    down.set_defaults(func=cmd_down)

    ex = lab_sub.add_parser(
        "exec", help="run a command in a lab node (a host name, upstream-REGION or client)"
    )
    _dir(ex)
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND...")
    ex.set_defaults(func=cmd_exec)


def _dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lab-dir",
        type=Path,
        default=lab.DEFAULT_DIR,
        help=f"the lab's state directory (default {lab.DEFAULT_DIR}, $FLEET_LAB_DIR)",
    )


def cmd_up(args: argparse.Namespace) -> int:
    lab.require_root()
    fleet = fleet_load.load(args.fleet, args.ref).fleet
    topo = topology.build(fleet)
    paths = lab.Paths(args.lab_dir)
    lab.up(topo, paths)
    print(f"lab up: {len(topo.hosts)} hosts in {len(topo.regions)} regions")
    for host in topo.hosts:
        print(
            f"  {host.name:<12} ssh root@{host.mgmt.ip}  ({host.region}, fabric {host.fabric4.ip})"
        )
    print(f"known_hosts: {paths.known_hosts}")
    print(f"ssh key:     {paths.client_key}")
    print(
        "look around: reconcile lab exec NODE -- COMMAND   (NODE: a host, upstream-REGION, client)"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = lab.status(lab.Paths(args.lab_dir))
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    if not info["up"]:
        print("lab: down")
        return 0
    print(f"lab: up ({len(info['namespaces'])} namespaces, state in {info['state']})")
    for name, host in sorted(info["hosts"].items()):
        ssh = "answering" if host["ssh"] else "NOT answering"
        print(f"  {name:<12} {host['address']}:{host['port']} sshd pid {host['sshd_pid']}: {ssh}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    removed = lab.down(lab.Paths(args.lab_dir))
    print(f"lab down: removed {len(removed)} items" if removed else "lab down: nothing to remove")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    lab.require_root()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    argv = lab.exec_argv(lab.Paths(args.lab_dir), args.node, cmd)
    return subprocess.call(argv, env={**os.environ})
