"""The desired resources of each host, as specs: what the plan wants every inventory to hold.

Pure. Turns the compiled fleet plus a placement into JSON-able specs, one per
resource, with the etag the reconciler will hand the agent. An app's shared
part of a machine spec is built once per app (a fleet of 100,000 machines
has a few hundred distinct apps), then each slot adds its own fields.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fleet import compile as fleet_compile
from fleet import export, model
from providers import resources
from providers.proxy import autostop
from providers.proxy import spec as proxy_spec
from providers.proxy import table as proxy_table
from reconciler.core import address, frozen, observed

Json = Any


@dataclass(frozen=True, slots=True)
class Desired:
    """One resource the plan wants on ``host``."""

    address: str
    kind: resources.Kind
    host: str
    id: str
    spec: Mapping[str, Json]
    etag: str
    app: str | None = None


def on_host(
    host: str,
    kind: resources.Kind,
    rid: str,
    spec: Mapping[str, Json],
    etag: str,
    *,
    app: str | None = None,
) -> Desired:
    """A host-level resource, its address derived from host, kind and id."""
    return _desired(address.host_resource(host, kind, rid), kind, host, rid, spec, etag, app)


_desired = frozen.maker(Desired)  # Desired(...) with every field, faster


def app_machine_base(app: model.App) -> dict[str, Json]:
    """The spec fields every machine of ``app`` shares."""
    vm = app.vm
    return {
        "app": app.name,
        "image": app.image,
        "env": dict(sorted(app.env.items())),
        "cmd": list(app.cmd) if app.cmd is not None else None,
        "entrypoint": list(app.entrypoint) if app.entrypoint is not None else None,
        "vm": {
            "cpus": vm.cpus,
            "memory_mb": vm.memory_mb,
            "cpu_kind": vm.cpu_kind.value,
            "gpus": {"model": vm.gpus.model, "count": vm.gpus.count} if vm.gpus else None,
        },
        "services": [
            {"internal_port": s.internal_port, "protocol": s.protocol.value} for s in app.services
        ],
        "checks": [export.to_json(c) for c in app.checks],
        "restart": {"policy": app.restart.policy.value, "max_retries": app.restart.max_retries},
        "kill_signal": app.kill_signal,
        "kill_timeout_s": app.kill_timeout_s,
        "auto_stop": auto_stop(app).value,
        **_auto_stop_floor(app),
    }


def _auto_stop_floor(app: model.App) -> dict[str, Json]:
    """For auto-stop apps only: what each host's autostop needs (floor, idle time).

    Absent otherwise, so the specs (and etags) of every other machine stay as they were.
    """
    rule = autostop.policy(app)
    if rule.action is model.AutoStop.OFF:
        return {}
    if rule.idle_after_s is None:
        return {"min_machines_running": rule.min_running}
    return {"min_machines_running": rule.min_running, "auto_stop_after_s": rule.idle_after_s}


def auto_stop(app: model.App) -> model.AutoStop:
    """The app's auto-stop mode: a stopped machine of such an app is not drift."""
    for service in app.services:
        if service.auto_stop_machines is not model.AutoStop.OFF:
            return service.auto_stop_machines
    return model.AutoStop.OFF


def v6_text(value: int) -> str:
    """RFC 5952 text of an IPv6 address given as an int: ``str(IPv6Address)``, faster."""
    if value >> 80:
        # The C formatter agrees with ipaddress except for the IPv4-compatible and
        # IPv4-mapped forms (first 80 bits zero), which it writes dotted.
        return _ntop(_AF_INET6, value.to_bytes(16, "big"))
    hextets = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    best_start, best_len, run_start, run_len = -1, 0, -1, 0
    for i, h in enumerate(hextets):
        if h == 0:
            if run_start < 0:
                run_start, run_len = i, 0
            run_len += 1
            if run_len > best_len:
                best_start, best_len = run_start, run_len
        else:
            run_start = -1
    parts = [f"{h:x}" for h in hextets]
    if best_len > 1:
        parts[best_start : best_start + best_len] = [""]
        if best_start == 0:
            parts.insert(0, "")
        if best_start + best_len == 8:
            parts.append("")
    return ":".join(parts)


_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6


HostBits = tuple[int, int]


def host_bits(prefix: ipaddress.IPv6Network) -> HostBits:
    """``(network address, suffix modulus)`` of a host prefix, for :func:`machine_address_text`."""
    return int(prefix.network_address), (1 << (128 - prefix.prefixlen)) - 2


def machine_address_text(bits: HostBits, slot_id: str) -> str:
    """``str(fleet.compile.machine_address(prefix, slot_id))``, given ``host_bits(prefix)``."""
    base, modulus = bits
    return v6_text(base + fleet_compile.slot_hash(slot_id) % modulus + 2)


@functools.lru_cache(maxsize=4096)
def _key(name: str) -> str:
    return observed.canonical(name)


def etag_of_parts(parts: Mapping[str, str]) -> str:
    """``observed.etag(spec)`` from the canonical JSON text of each top-level value."""
    body = ",".join([f"{_key(k)}:{parts[k]}" for k in sorted(parts)])
    return observed.digest_text("{" + body + "}")


class _Template:
    """``etag_of_parts`` of a spec whose top-level values are fixed except a few keys.

    The canonical text is cut once into fixed pieces around the varying values,
    so each etag costs a list copy and a join instead of a sort and a join.
    """

    def __init__(self, fixed: Mapping[str, str], varying: tuple[str, ...]) -> None:
        pieces: list[str] = []
        text = "{"
        self.at: dict[str, int] = {}
        for i, k in enumerate(sorted({*fixed, *varying})):
            text += ("," if i else "") + _key(k) + ":"
            if k in varying:
                pieces.append(text)
                self.at[k] = len(pieces)
                pieces.append("")
                text = ""
            else:
                text += fixed[k]
        pieces.append(text + "}")
        self.pieces = pieces
        self.order = tuple(sorted(varying))  # the varying keys in text order

    def etag_in_order(self, *values: str) -> str:
        """The etag with the varying keys' texts given in ``self.order``."""
        pieces = self.pieces.copy()
        pieces[1::2] = values
        return observed.digest_text("".join(pieces))

    def etag(self, values: Mapping[str, str]) -> str:
        """The etag with ``values`` (canonical JSON text) for the varying keys."""
        pieces = self.pieces.copy()
        for k, v in values.items():
            pieces[self.at[k]] = v
        return observed.digest_text("".join(pieces))


class AppParts:
    """Everything about one app's desired resources that does not depend on host or slot.

    Built once per app; each machine, route and announcement then costs a few
    string joins instead of a full JSON dump (a no-op plan of 100,000 machines
    spends its time here).
    """

    def __init__(self, app: model.App, addrs: model.AppAddresses) -> None:
        self.app = app
        self.addrs = addrs
        self.announces = bool(addrs.all())
        self.public = serves_publicly(app)

    # Made on first use: a plan that skips every host of an app (reconciler.core.skip)
    # builds none of its specs.

    @functools.cached_property
    def base(self) -> dict[str, Json]:
        return app_machine_base(self.app)

    @functools.cached_property
    def machine_tpl(self) -> _Template:
        base_parts = {k: observed.canonical(v) for k, v in self.base.items()}
        tpl = _Template(base_parts, ("slot", "region", "address"))
        assert tpl.order == ("address", "region", "slot")
        return tpl

    @functools.cached_property
    def announcement_spec(self) -> dict[str, Json]:
        return {
            "app": self.app.name,
            "prefixes": [f"{a}/{a.max_prefixlen}" for a in self.addrs.all()],
        }

    @functools.cached_property
    def announcement_etag(self) -> str:
        return observed.etag(self.announcement_spec)

    def machine(
        self,
        slot: model.MachineSlot,
        prefix: Any,
        slot_id: str | None = None,
        slot_key: str | None = None,
    ) -> tuple[dict[str, Json], str]:
        """The machine spec of ``slot`` on a host owning ``prefix``, and its etag.

        ``slot_id`` and ``slot_key`` are ``slot.id`` and ``slot.key`` when the
        caller has them already.
        """
        addr, tag = self.machine_etag(
            slot.region, host_bits(prefix), slot.id if slot_id is None else slot_id,
            slot.key if slot_key is None else slot_key,
        )  # fmt: skip
        return self.machine_spec(slot.region, slot.key if slot_key is None else slot_key, addr), tag

    def machine_etag(
        self, region: str, bits: HostBits, slot_id: str, slot_key: str
    ) -> tuple[str, str]:
        """``(address, etag)`` of the slot's machine spec, without building the spec.

        A no-op plan needs only the etag of each slot (to compare with what the
        host reports); the spec is built for the few slots that change.
        """
        addr = machine_address_text(bits, slot_id)
        return addr, self.machine_tpl.etag_in_order(f'"{addr}"', _key(region), _key(slot_key))

    def machine_spec(self, region: str, slot_key: str, addr: str) -> dict[str, Json]:
        spec = dict(self.base)
        spec["slot"] = slot_key
        spec["region"] = region
        spec["address"] = addr
        return spec

    def announcement(self, host: str) -> Desired:
        name = self.app.name
        kind = resources.Kind.ANNOUNCEMENT
        return on_host(host, kind, name, self.announcement_spec, self.announcement_etag, app=name)


class RouteSpecs:
    """Every host's ``route[<app>]``: the app's routes for the host's region, from placement.

    Every host is an edge for every public app (as on Fly): local-region
    machines are active servers, other regions' are backups reached over the
    mesh. The spec depends only on the app and the host's *region*, so it and
    its etag are computed once per (app, region) and shared by that region's
    hosts: a no-op plan pays one table build per app and region, not per host.
    Machines enter as servers from the desired placement; the plan orders a
    route's update after the health gates of the machines it adds
    (:mod:`reconciler.core.rollout`).

    Cost: a table build walks the machines it is given, so each (app, region)
    build gets only the machines it can pick (:meth:`_candidates`): the
    region's own, then, nearest region first, the lowest-index machines of
    other regions until ``max_backups`` are in hand. 200 apps x 10 regions of a
    10,000-machine fleet then walk ~10 machines per build instead of ~50.
    """

    def __init__(
        self, world: model.DesiredWorld, placed: Iterable[tuple[str, model.MachineSlot, str]]
    ) -> None:
        """``placed``: every desired machine as (host, slot, private address text)."""
        self.world = world
        # app -> region -> the app's machines there, by slot index
        self._views: dict[str, dict[str, list[proxy_table.MachineView]]] = {}
        healthy = proxy_table.MachineState.HEALTHY
        for host, slot, addr in placed:
            regions = self._views.get(slot.app)
            if regions is None:
                regions = self._views[slot.app] = {}
            views = regions.get(slot.region)
            if views is None:
                views = regions[slot.region] = []
            views.append(_view(slot, host, healthy, addr, _NO_PORTS))
        for regions in self._views.values():
            for views in regions.values():
                views.sort(key=_slot_index)
        self._cache: dict[tuple[str, str], tuple[dict[str, Json], str]] = {}
        self._alone_worlds: dict[str, model.DesiredWorld] = {}

    @classmethod
    def of_keys(
        cls, world: model.DesiredWorld, on_host: Mapping[str, Mapping[str, Iterable[str]]]
    ) -> RouteSpecs:
        """From host -> app -> slot keys (``ams#1``), each address computed here."""
        placed = []
        for host, apps in on_host.items():
            prefix = world.host_prefixes[host]
            for app, keys in apps.items():
                for key in keys:
                    region, _, index = key.rpartition("#")
                    slot = model.MachineSlot(app, region, int(index))
                    addr = v6_text(int(fleet_compile.machine_address(prefix, slot.id)))
                    placed.append((host, slot, addr))
        return cls(world, placed)

    def _candidates(self, app: str, region: str) -> list[proxy_table.MachineView]:
        """The machines an (app, region) table can route to: local ones, then the nearest backups.

        The table takes every healthy local machine and, as backups, the first
        ``max_backups`` machines of other regions ordered by (latency, region,
        index): a region's lowest indexes, nearest regions first. Those are
        all given here; the rest could never be chosen.
        """
        regions = self._views.get(app, {})
        out = list(regions.get(region, ()))
        fleet = self.world.fleet
        latency = fleet.regions[region].latency_ms if region in fleet.regions else {}
        want = _SETTINGS.max_backups
        unknown = proxy_table.UNKNOWN_LATENCY_MS
        nearest = sorted((latency.get(r, unknown), r) for r in regions if r != region)
        taken = 0
        for _, other in nearest:
            if taken >= want:
                break
            picked = regions[other][:want]
            out += picked
            taken += len(picked)
        return out

    def _alone(self, app: str) -> model.DesiredWorld:
        """The world of ``app`` alone, as :func:`providers.proxy.spec.app_routes` builds it.

        Made once per app, not once per (app, region); its anycast addresses
        keep their text, which a table build writes for every listener.
        """
        alone = self._alone_worlds.get(app)
        if alone is None:
            world = self.world
            only = dataclasses.replace(world.fleet, apps={app: world.fleet.apps[app]})
            addrs = world.anycast[app]
            texted = model.AppAddresses(
                _V4Text(addrs.ipv4) if addrs.ipv4 is not None else None,
                _V6Text(addrs.ipv6) if addrs.ipv6 is not None else None,
            )
            alone = dataclasses.replace(world, fleet=only, anycast={app: texted})
            self._alone_worlds[app] = alone
        return alone

    def spec(self, app: str, host: str) -> tuple[dict[str, Json], str]:
        """The route spec of ``app`` on ``host`` and its etag."""
        region = self.world.fleet.hosts[host].region
        key = (app, region)
        hit = self._cache.get(key)
        if hit is None:
            # unchecked: the fleet is validated, and the agent checks its table again
            views = self._candidates(app, region)
            table = proxy_table.build(self._alone(app), host, views, _SETTINGS, checked=False)
            spec = proxy_spec.to_json(app, region, table.routes)
            hit = self._cache[key] = (spec, observed.etag(spec))
        return hit

    def route(self, host: str, app: str) -> Desired:
        spec, tag = self.spec(app, host)
        return on_host(host, resources.Kind.ROUTE, app, spec, tag, app=app)


_SETTINGS = proxy_spec.DEFAULT_SETTINGS
_NO_PORTS: Mapping[int, int] = MappingProxyType({})
_view = frozen.maker(proxy_table.MachineView)  # MachineView(...) with every field, faster


class _V4Text(ipaddress.IPv4Address):
    """An IPv4 address whose text is made once (``str`` of one is Python work each time)."""

    __slots__ = ("_text",)

    def __init__(self, address: ipaddress.IPv4Address) -> None:
        super().__init__(int(address))
        self._text = super().__str__()

    def __str__(self) -> str:
        return self._text


class _V6Text(ipaddress.IPv6Address):
    """An IPv6 address whose text is made once."""

    __slots__ = ("_text",)

    def __init__(self, address: ipaddress.IPv6Address) -> None:
        super().__init__(int(address))
        self._text = super().__str__()

    def __str__(self) -> str:
        return self._text


def _slot_index(view: proxy_table.MachineView) -> int:
    return view.slot.index


def instance_id(slot: model.MachineSlot, etag: str) -> str:
    """A new machine instance's id on its host: the slot plus the spec's digest."""
    return f"{slot.id}@{etag.removeprefix('sha256:')[:8]}"


@functools.lru_cache(maxsize=4096)
def _image_etag(ref: str) -> str:
    return observed.etag({"ref": ref})


def image(host: str, ref: str) -> Desired:
    return on_host(host, resources.Kind.IMAGE, ref, {"ref": ref}, _image_etag(ref))


def serves_publicly(app: model.App) -> bool:
    return any(s.ports for s in app.services)
