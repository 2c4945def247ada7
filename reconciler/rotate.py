"""`reconcile hosts rotate-keys`: a host's WireGuard key replaced without dropping a connection.

The staged rotation of :mod:`providers.network.rotation`, carried out as
ordinary agent actions on the ``wireguard`` resources (each with the etag it
expects, so a concurrent apply is refused rather than overwritten), one
rotating host at a time:

1. *stage*: the rotating host generates its next key on the host
   (``stage_next_key`` in its spec) and reports the public half as an event;
2. *introduce*: every other host adds the new key as a peer with the endpoint
   and no allowed IPs (it can answer a handshake, carries nothing);
3. *switch*: the rotating host takes the staged key (``key`` in its spec);
   sessions made with the old key keep receiving;
4. *move and retire*, straight after and on every host at once: every host
   gets its normal desired spec with the new key, which the agent's diff
   turns into one ``wg set`` moving the allowed IPs to the new peer, then the
   removal of the old one.

The last stage leaves every ``wireguard`` resource exactly as the planner
wants it, so the next plan is a no-op. This module is the I/O shell; the
specs come from :mod:`reconciler.core.hostnet`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleet import compile as fleet_compile
from fleet import model
from fleet.errors import HostError
from providers import resources
from reconciler.core import hostnet, observed
from reconciler.core import plan as P
from reconciler.hosts import fanout, protocol

Json = Any
Say = Callable[[str], None]
Kind = resources.Kind


def _mesh(obs: observed.HostObservation) -> observed.Resource:
    for r in obs.resources:
        if r.kind is Kind.WIREGUARD and r.id == hostnet.MESH_ID:
            return r
    raise HostError(obs.host, "no wireguard resource: apply the fleet first", action="rotate-keys")


def _update(
    client: protocol.HostClient,
    stage: str,
    spec: Mapping[str, Json],
    expect: str,
    etag: str | None = None,
) -> tuple[str, list[protocol.Event]]:
    """One ``update`` of the host's mesh; returns the new etag and the action's events."""
    tag = etag or observed.etag(spec)
    action = protocol.Action(
        f"host.{client.name}/wireguard[mesh]:rotate-{stage}",
        Kind.WIREGUARD,
        hostnet.MESH_ID,
        P.Verb.UPDATE,
        spec,
        tag,
        expect,
    )
    events: list[protocol.Event] = []
    [result] = client.apply([action], events.append)
    if not result.outcome.succeeded:
        raise HostError(
            client.name, f"{stage}: {result.outcome}: {result.message}", action="rotate-keys"
        )
    return tag, events


def rotate(
    fleet: model.Fleet,
    clients: Mapping[str, protocol.HostClient],
    host: str,
    say: Say,
) -> str:
    """Rotate ``host``'s key across the mesh; returns the new public key."""
    obs = {name: c.observe() for name, c in sorted(clients.items())}
    meshes = {name: _mesh(o) for name, o in obs.items()}
    etags = {name: r.etag for name, r in meshes.items()}
    mine = meshes[host]
    old = obs[host].facts.wireguard_public_key or ""

    staged = {**mine.spec, "stage_next_key": True}
    etags[host], events = _update(clients[host], "stage", staged, etags[host])
    new = next((e.message for e in events if e.type == "next-key"), "")
    if not hostnet.wgkey_ok(new) or new == old:
        raise HostError(host, "the agent did not stage a new key", action="rotate-keys")
    say(f"{host}: staged key {new[:8]} (was {old[:8]})")

    others = [h for h, r in meshes.items() if h != host and _has_peer(r.spec, old)]
    intro: dict[str, Json] = {}
    for p in meshes[others[0]].spec.get("peers", []) if others else []:
        if p.get("public_key") == old:
            intro = {**p, "public_key": new, "allowed_ips": [], "keepalive": 0}
    introduced = {}
    for h in others:
        spec = {**meshes[h].spec, "peers": [*meshes[h].spec.get("peers", []), intro]}
        etags[h], _ = _update(clients[h], "introduce", spec, etags[h])
        introduced[h] = spec
    say(f"introduced {new[:8]} on {len(others)} host(s)")

    # Everything the last stage sends is ready before the switch: between the
    # switch and each host's move, the rotating host's packets on its new
    # session are dropped there (TCP retransmits across that window).
    prefixes = {
        n: ipaddress.IPv6Network(o.facts.private_prefix)
        for n, o in obs.items()
        if o.facts.private_prefix
    }
    world = fleet_compile.compile_world(fleet, previous_prefixes=prefixes)
    keys = {n: o.facts.wireguard_public_key for n, o in obs.items()}
    parts = hostnet.MeshParts(world, {n: k for n, k in keys.items() if k} | {host: new})
    final = {h: parts.spec(h) for h in [*others, host]}

    switched = {k: v for k, v in staged.items() if k != "stage_next_key"} | {"key": new}
    etags[host], _ = _update(clients[host], "switch", switched, etags[host])

    def move(h: str, client: protocol.HostClient) -> str:
        return _update(client, "move", final[h].spec, etags[h], final[h].etag)[0]

    moved = fanout.fan_out({h: clients[h] for h in final}, move, max_concurrency=max(1, len(final)))
    for h, error in sorted(moved.failed.items()):
        raise HostError(h, f"move: {error}", action="rotate-keys")
    say(f"{host}: now {new[:8]} on every peer; old key retired")
    return new


def _has_peer(spec: Mapping[str, Json], key: str) -> bool:
    return any(p.get("public_key") == key for p in spec.get("peers", []))


def rotate_all(
    fleet: model.Fleet,
    clients: Mapping[str, protocol.HostClient],
    hosts: Sequence[str],
    say: Say,
) -> dict[str, str]:
    """Rotate each of ``hosts`` in turn (one at a time: each rotation sees the last)."""
    return {h: rotate(fleet, clients, h, say) for h in hosts}
