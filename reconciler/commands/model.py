"""`reconcile validate` and `reconcile desired`: the fleet model, before any host is asked."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleet import compile as fleet_compile
from fleet import export
from fleet import load as fleet_load
from reconciler.commands import common


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check the fleet's YAML; print every error")
    common.add_fleet_options(p)
    p.set_defaults(func=validate)

    p = sub.add_parser("desired", help="show the compiled desired world")
    common.add_fleet_options(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=desired)


def validate(args: argparse.Namespace) -> int:
    loaded = fleet_load.load(args.fleet, args.ref)
    fleet = loaded.fleet
    at = f" at {loaded.origin.commit[:12]}" if loaded.origin.commit and args.ref else ""
    print(
        f"{args.fleet}{at}: valid: {len(fleet.regions)} regions, {len(fleet.hosts)} hosts, "
        f"{len(fleet.apps)} apps, {sum(a.machine_count for a in fleet.apps.values())} machines"
    )
    return 0


def desired(args: argparse.Namespace) -> int:
    loaded = fleet_load.load(args.fleet, args.ref)
    world = fleet_compile.compile_world(loaded.fleet)
    if args.format == "json":
        json.dump(export.world_to_json(world), sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print(_text(world))
    return 0


def _text(world: Any) -> str:
    fleet = world.fleet
    lines = [f"network {fleet.network.name}: private {fleet.network.private_prefix}"]
    pools = ", ".join(str(p) for p in fleet.network.anycast_pools) or "none"
    lines.append(f"  anycast pools: {pools}; wireguard port {fleet.network.wireguard_port}")
    for name, region in sorted(fleet.regions.items()):
        hosts = [h for h in fleet.hosts.values() if h.region == name]
        lines.append(f"region {name} ({region.jurisdiction}): {len(hosts)} hosts")
        for host in sorted(hosts, key=lambda h: h.name):
            gpus = "".join(f", {g.count} x {g.model}" for g in host.capacity.gpus)
            flag = " [cordoned]" if host.cordoned else ""
            lines.append(
                f"  host {host.name}{flag}: {host.capacity.cpus} cpus, "
                f"{host.capacity.memory_mb} MiB{gpus}; ssh {host.ssh.address}:{host.ssh.port}; "
                f"private {world.host_prefixes[host.name]}"
            )
    for name, app in sorted(fleet.apps.items()):
        addrs = ", ".join(str(a) for a in world.anycast[name].all()) or "no public address"
        lines.append(f"app {name}: {app.image} ({addrs})")
        slots = [s.key for s in world.slots if s.app == name]
        lines.append(f"  machines: {', '.join(slots) or 'none'}")
    return "\n".join(lines)
