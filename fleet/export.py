"""Model objects to plain JSON-able values, for `reconcile desired` and saved files.

Pure. Dataclasses become objects, enums their values, addresses and networks
strings, mappings and tuples JSON objects and arrays; ``source`` fields are
left out (they describe the YAML, not the world).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Mapping
from typing import Any

from fleet import model

_SKIP = frozenset({"source", "fleet"})


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _SKIP
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    return value


def world_to_json(world: model.DesiredWorld) -> dict[str, Any]:
    """The compiled desired world: the fleet's objects plus allocations and slots."""
    fleet = world.fleet
    return {
        "commit": fleet.commit,
        "network": to_json(fleet.network),
        "regions": to_json(fleet.regions),
        "hosts": {
            name: {**to_json(host), "private_prefix": str(world.host_prefixes[name])}
            for name, host in sorted(fleet.hosts.items())
        },
        "apps": {
            name: {**to_json(app), "anycast": to_json(world.anycast[name])}
            for name, app in sorted(fleet.apps.items())
        },
        "machines": [slot.id for slot in world.slots],
    }
