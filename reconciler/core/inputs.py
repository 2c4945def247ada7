"""Per-host inputs digest: a hash of everything a host's desired resources are made from. Pure.

A plan may skip a host wholesale (no per-resource parse, spec build or diff,
see :mod:`reconciler.core.skip`) when the digest the reconciler recorded on it
after its last complete apply equals the digest of the plan being made now.
So the digest must change whenever any desired resource of the host could:

* the fleet-wide inputs, for every host: the Network, every Region and every
  Host document (mesh peers are every host; BGP reads the Region and the
  Network), the compiled private prefixes and anycast addresses, and the
  WireGuard keys the mesh is made of;
* per app with a slot placed on the host: the app's whole document and the
  host's slot keys of that app (machines, images);
* on an edge host, every app's document and placement (route tables take
  machines from every region; announcements follow the apps' addresses).

Every value is hashed from a canonical JSON rendering of the validated models
(sets sorted, no dependence on hash seeds), never ``repr``. ``VERSION`` names
the rules that turn these inputs into resources: bump it whenever a change to
the reconciler would build a different spec from the same inputs, so that
digests recorded by the previous release never match.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import operator
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from fleet import model
from reconciler.core import observed

VERSION = "inputs/1"


# Not inputs: where a document was read from (a gitops clone's path changes every
# time) and the fleet's commit (a commit that changes nothing changes no resource).
_NOT_INPUTS = frozenset({"source", "commit"})
_CONVERT: dict[type, Callable[[Any], Any]] = {}  # a type -> how its values are digested


def _plain(value: Any) -> Any:
    cls = type(value)
    convert = _CONVERT.get(cls)
    if convert is None:
        convert = _CONVERT[cls] = _converter(cls)
    return convert(value)


def _converter(cls: type) -> Callable[[Any], Any]:
    """How to digest the values of ``cls`` (decided once per type: 20,000 values a plan)."""
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_INPUTS]
        getter = operator.attrgetter(*names)
        name = cls.__name__
        if len(names) == 1:
            return lambda v: (name, (getter(v),))
        return lambda v: (name, getter(v))
    if cls is MappingProxyType or issubclass(cls, Mapping):
        return lambda v: {str(k): x for k, x in v.items()}
    if issubclass(cls, (set, frozenset)):
        return lambda v: sorted(_text(x) for x in v)
    if issubclass(cls, enum.Enum):
        return operator.attrgetter("value")
    if issubclass(
        cls,
        (
            ipaddress.IPv4Address,
            ipaddress.IPv6Address,
            ipaddress.IPv4Network,
            ipaddress.IPv6Network,
        ),
    ):
        return str

    def refuse(value: Any) -> Any:
        raise TypeError(f"cannot digest a {cls.__name__}")

    return refuse


_ENCODER = observed.encoder(_plain)


def _text(value: Any) -> str:
    return _ENCODER.encode(value)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fleet_wide(world: model.DesiredWorld, keys: Mapping[str, str]) -> str:
    """The digest of what every host's resources may depend on (not the apps)."""
    fleet = world.fleet
    return _digest(
        _text(
            {
                "version": VERSION,
                "network": fleet.network,
                "regions": fleet.regions,
                "hosts": fleet.hosts,
                "prefixes": {
                    h: [int(p.network_address), p.prefixlen] for h, p in world.host_prefixes.items()
                },
                "anycast": world.anycast,
                "keys": dict(keys),
            }
        )
    )


def app_digests(fleet: model.Fleet) -> dict[str, str]:
    """Each app's document, digested once."""
    return {name: _digest(_text(app)) for name, app in fleet.apps.items()}


def host_digests(
    world: model.DesiredWorld,
    keys: Mapping[str, str],
    on_host: Mapping[str, Mapping[str, Iterable[str]]],
    hosts: Iterable[str],
    edges: frozenset[str] | set[str],
) -> dict[str, str]:
    """The inputs digest of each of ``hosts``.

    ``on_host``: host -> app -> the slot keys placed there (this plan's
    placement); ``edges``: the edge hosts.
    """
    common = fleet_wide(world, keys)
    apps = app_digests(world.fleet)
    line = {a: f"{a} {d} " for a, d in apps.items()}  # then the app's slot keys
    hosts = list(hosts)
    every_app = ""
    if any(h in edges for h in hosts):
        placement: dict[str, list[str]] = {name: [] for name in apps}
        for host, by_app in on_host.items():  # any order: each app's list is sorted
            for app, keys_ in by_app.items():
                placement[app] += [f"{k}@{host}" for k in keys_]
        every_app = _digest(
            "\n".join(line[a] + ",".join(sorted(placement[a])) for a in sorted(apps))
        )
    out = {}
    for host in hosts:
        mine = on_host.get(host, {})
        lines = [common, host, every_app if host in edges else "-"]
        lines += [line[a] + ",".join(sorted(mine[a])) for a in sorted(mine)]
        out[host] = "inputs:" + _digest("\n".join(lines))[:32]
    return out
