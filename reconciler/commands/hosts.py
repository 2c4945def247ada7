"""`reconcile hosts bootstrap`: install and start the agent on the fleet's hosts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fleet import compile as fleet_compile
from fleet import load as fleet_load
from fleet import model
from fleet.errors import FleetError, HostError
from reconciler.commands import common
from reconciler.hosts import bootstrap, bundle, factory, fanout, hostkeys, ssh


def register(sub: Any) -> None:
    p = sub.add_parser("hosts", help="manage the hosts themselves")
    hosts_sub = p.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    b = hosts_sub.add_parser("bootstrap", help="install or upgrade fleet-agent and start it")
    common.add_fleet_options(b)
    common.add_state_options(b)
    b.add_argument("hosts", nargs="*", metavar="HOST", help="only these hosts (default: all)")
    b.add_argument(
        "--install-packages",
        action="store_true",
        help="also install the system packages the agent's providers use (apt-get)",
    )
    b.add_argument("--parallelism", type=int, default=4, metavar="N")
    b.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="a registry host the agents may reach over plain HTTP (repeatable)",
    )
    b.add_argument(
        "--simulate-gpus",
        action="store_true",
        help="labs and tests only: boot GPU machines without a GPU instead of refusing them",
    )
    b.add_argument(
        "--lab-timers",
        action="store_true",
        help="labs and tests only: BGP timers in seconds, 2 s graceful shutdown, 3 s hold-down",
    )
    b.set_defaults(func=cmd_bootstrap)


class SSHRemote:
    """bootstrap's view of one SSH connection: commands that must succeed, uploads."""

    def __init__(self, host: str, conn: ssh.SSHConnection) -> None:
        self.host = host
        self.conn = conn

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float = 120.0) -> str:
        result = self.conn.exec(command, stdin=stdin, timeout=timeout)
        if result.exit_status != 0:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise HostError(
                self.host,
                f"`{command[:80]}` exited {result.exit_status}: {err[-1] if err else ''}",
                action="bootstrap",
            )
        return result.stdout.decode("utf-8", "replace")

    def upload(self, data: bytes, path: str, mode: int = 0o644) -> None:
        self.conn.upload(data, path, mode=mode)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    fleet = fleet_load.load(args.fleet, args.ref).fleet
    chosen = _select(fleet, args.hosts)
    world = fleet_compile.compile_world(fleet)
    cache = Path(os.environ.get("FLEET_BUNDLE_CACHE", ".fleet-state/bundles"))
    the_bundle = bundle.build(cache)
    kernel = bundle.kernel_package(cache)
    settings = factory.ssh_settings(args.ssh_key, args.known_hosts)
    creds = ssh.load_credentials(settings.ssh_key, fleet_dir=args.fleet)
    pool = ssh.SSHPool(
        creds, hostkeys.load_policy(settings.known_hosts), ssh.SSHOptions(netns=settings.netns)
    )
    with pool:

        def one(name: str, host: model.Host) -> bootstrap.Outcome:
            remote = SSHRemote(name, pool.get(host))
            prefix = str(world.host_prefixes[name])
            return bootstrap.bootstrap(
                remote,
                host,
                the_bundle,
                prefix,
                install_packages=args.install_packages,
                insecure_registries=args.insecure_registry,
                kernel=kernel,
                simulate_gpus=args.simulate_gpus,
                lab_timers=args.lab_timers,
            )

        result = fanout.fan_out(chosen, one, max_concurrency=args.parallelism)
    for line in bootstrap.describe([result.succeeded[n] for n in sorted(result.succeeded)]):
        print(line)
    for _name, error in sorted(result.failed.items()):
        print(f"error: {error}", file=sys.stderr)
    return 0 if not result.failed else 1


def _select(fleet: model.Fleet, names: list[str]) -> dict[str, model.Host]:
    unknown = [n for n in names if n not in fleet.hosts]
    if unknown:
        raise FleetError(f"unknown host(s): {', '.join(unknown)}")
    return {n: fleet.hosts[n] for n in sorted(names or fleet.hosts)}
