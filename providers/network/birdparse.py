"""Pure parsers for ``birdc`` output: ``show protocols all``, ``show route all``, ``configure``.

Each observation of BIRD is a command (in :mod:`providers.network.birdctl`)
plus one of these functions; their golden tests read output recorded from real
BIRD 2.0.12 sessions (``tests/network/recorded/``). Unknown lines are skipped,
not fatal: a newer BIRD that adds a field must not break observation, while a
malformed header line (the part we rely on) raises ProviderError.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fleet import model
from fleet.errors import ProviderError

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Channel:
    name: str  # ipv4 / ipv6
    state: str  # UP, DOWN, ...
    imported: int = 0
    exported: int = 0
    preferred: int = 0
    filtered: int = 0


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    proto: str  # BGP, Static, Device, Kernel
    table: str
    state: str  # up, down, start
    since: str
    info: str  # "Established", "Active", "Connect" ...
    bgp_state: str = ""
    neighbor_address: model.IPAddress | None = None
    neighbor_as: int | None = None
    local_as: int | None = None
    last_error: str = ""
    channels: tuple[Channel, ...] = ()

    @property
    def established(self) -> bool:
        return self.bgp_state == "Established"


@dataclass(frozen=True, slots=True)
class NextHop:
    address: model.IPAddress
    interface: str


@dataclass(frozen=True, slots=True)
class Route:
    table: str
    prefix: model.IPNetwork
    kind: str  # unicast, unreachable, blackhole, ...
    protocol: str
    since: str
    primary: bool
    preference: int
    next_hops: tuple[NextHop, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @property
    def communities(self) -> tuple[tuple[int, int], ...]:
        text = self.attributes.get("BGP.community", "")
        return tuple((int(a), int(b)) for a, b in re.findall(r"\((\d+),(\d+)\)", text))


def configure_ok(text: str) -> bool:
    """True when ``birdc configure`` reports success."""
    return bool(re.search(r"^(Reconfigured|Reconfiguration in progress)", text, re.MULTILINE))


# ------------------------------------------------------------------ protocols

_ROUTES = re.compile(r"(\d+) (imported|exported|preferred|filtered)")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("BIRD ")]


def parse_protocols(text: str) -> tuple[Protocol, ...]:
    """Parse ``birdc show protocols all`` (or plain ``show protocols``)."""
    out: list[Protocol] = []
    current: dict[str, object] | None = None
    channels: list[Channel] = []
    channel: dict[str, object] | None = None

    def close_channel() -> None:
        nonlocal channel
        if channel is not None:
            channels.append(Channel(**channel))  # type: ignore[arg-type]
            channel = None

    def close() -> None:
        nonlocal current, channels
        close_channel()
        if current is not None:
            out.append(Protocol(**current, channels=tuple(channels)))  # type: ignore[arg-type]
        current, channels = None, []

    for line in _lines(text):
        if not line.strip() or line.startswith("Name "):
            continue
        if not line.startswith(" "):
            close()
            parts = line.split(None, 5)
            if len(parts) < 5:
                raise ProviderError(f"show protocols: unexpected line {line!r}")
            current = {
                "name": parts[0],
                "proto": parts[1],
                "table": parts[2],
                "state": parts[3],
                "since": parts[4],
                "info": parts[5].strip() if len(parts) > 5 else "",
            }
            continue
        if current is None:
            continue
        stripped = line.strip()
        if line.startswith("  Channel "):
            close_channel()
            channel = {"name": stripped.split()[1], "state": ""}
            continue
        key, _, value = stripped.partition(":")
        value = value.strip()
        if channel is not None:
            if key == "State":
                channel["state"] = value
            elif key == "Routes":
                for count, what in _ROUTES.findall(value):
                    channel[what] = int(count)
            continue
        if key == "BGP state":
            current["bgp_state"] = value
        elif key == "Neighbor address":
            current["neighbor_address"] = ipaddress.ip_address(value.split("%")[0])
        elif key == "Neighbor AS":
            current["neighbor_as"] = int(value)
        elif key == "Local AS":
            current["local_as"] = int(value)
        elif key == "Last error":
            current["last_error"] = value
    close()
    return tuple(out)


# ------------------------------------------------------------------ routes

_HEAD = re.compile(
    r"^(?P<prefix>\S+)?\s+(?P<kind>[a-z]+)\s+\[(?P<proto>\S+)\s+(?P<since>[^\]\s]+)[^\]]*\]"
    r"\s+(?P<primary>\*\s+)?\((?P<pref>\d+)(?:/[^)]*)?\)"
)
_VIA = re.compile(r"^\s*via\s+(?P<addr>\S+)\s+on\s+(?P<iface>\S+)")


def parse_routes(text: str) -> tuple[Route, ...]:
    """Parse ``birdc show route all`` (every table, every route of a prefix)."""
    out: list[Route] = []
    table = ""
    prefix: model.IPNetwork | None = None
    head: dict[str, object] | None = None
    hops: list[NextHop] = []
    attrs: dict[str, str] = {}

    def close() -> None:
        nonlocal head, hops, attrs
        if head is not None:
            out.append(Route(**head, next_hops=tuple(hops), attributes=MappingProxyType(attrs)))  # type: ignore[arg-type]
        head, hops, attrs = None, [], {}

    for line in _lines(text):
        if not line.strip():
            continue
        if line.startswith("Table "):
            close()
            table = line[len("Table ") :].rstrip(":").strip()
            continue
        if line.startswith("\t") or line.startswith("    \t"):
            via = _VIA.match(line)
            if via:
                hops.append(NextHop(ipaddress.ip_address(via["addr"]), via["iface"]))
                continue
            key, _, value = line.strip().partition(":")
            attrs[key.strip()] = value.strip()
            continue
        match = _HEAD.match(line)
        if match is None:
            raise ProviderError(f"show route: unexpected line {line!r}")
        close()
        if match["prefix"]:
            prefix = ipaddress.ip_network(match["prefix"])
        if prefix is None:
            raise ProviderError(f"show route: route without a prefix: {line!r}")
        head = {
            "table": table,
            "prefix": prefix,
            "kind": match["kind"],
            "protocol": match["proto"],
            "since": match["since"],
            "primary": bool(match["primary"]),
            "preference": int(match["pref"]),
        }
    close()
    return tuple(out)


def routes_for(routes: Iterable[Route], prefix: model.IPNetwork) -> tuple[Route, ...]:
    return tuple(r for r in routes if r.prefix == prefix)


def next_hops(routes: Iterable[Route], prefix: model.IPNetwork) -> frozenset[model.IPAddress]:
    """Every next hop BIRD knows for ``prefix`` (the ECMP candidates)."""
    return frozenset(h.address for r in routes_for(routes, prefix) for h in r.next_hops)
