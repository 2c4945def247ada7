"""The desired resources of each host, as specs: what the plan wants every inventory to hold.

Pure. Turns the compiled fleet plus a placement into JSON-able specs, one per
resource, with the etag the reconciler will hand the agent. An app's shared
part of a machine spec is built once per app (a fleet of 100,000 machines
has a few hundred distinct apps), then each slot adds its own fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet import compile as fleet_compile
from fleet import export, model
from providers import resources
from reconciler.core import address, observed

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
    }


def auto_stop(app: model.App) -> model.AutoStop:
    """The app's auto-stop mode: a stopped machine of such an app is not drift."""
    for service in app.services:
        if service.auto_stop_machines is not model.AutoStop.OFF:
            return service.auto_stop_machines
    return model.AutoStop.OFF


def machine_spec(base: Mapping[str, Json], slot: model.MachineSlot, prefix: Any) -> dict[str, Json]:
    spec = dict(base)
    spec["slot"] = slot.key
    spec["region"] = slot.region
    spec["address"] = str(fleet_compile.machine_address(prefix, slot.id))
    return spec


def instance_id(slot: model.MachineSlot, etag: str) -> str:
    """A new machine instance's id on its host: the slot plus the spec's digest."""
    return f"{slot.id}@{etag.removeprefix('sha256:')[:8]}"


def image(host: str, ref: str) -> Desired:
    spec = {"ref": ref}
    return Desired(
        address.host_resource(host, resources.Kind.IMAGE, ref),
        resources.Kind.IMAGE,
        host,
        ref,
        spec,
        observed.etag(spec),
    )


def route(host: str, app: model.App, addrs: model.AppAddresses, slots: list[str]) -> Desired:
    spec = {
        "app": app.name,
        "addresses": [str(a) for a in addrs.all()],
        "services": [
            {
                "internal_port": s.internal_port,
                "protocol": s.protocol.value,
                "ports": [
                    {
                        "port": p.port,
                        "handlers": [h.value for h in p.handlers],
                        "force_https": p.force_https,
                    }
                    for p in s.ports
                ],
            }
            for s in app.services
            if s.ports
        ],
        "backends": sorted(slots),
    }
    return Desired(
        address.host_resource(host, resources.Kind.ROUTE, app.name),
        resources.Kind.ROUTE,
        host,
        app.name,
        spec,
        observed.etag(spec),
        app.name,
    )


def announcement(host: str, app: str, addrs: model.AppAddresses) -> Desired:
    spec = {
        "app": app,
        "prefixes": [f"{a}/{a.max_prefixlen}" for a in addrs.all()],
    }
    return Desired(
        address.host_resource(host, resources.Kind.ANNOUNCEMENT, app),
        resources.Kind.ANNOUNCEMENT,
        host,
        app,
        spec,
        observed.etag(spec),
        app,
    )


def serves_publicly(app: model.App) -> bool:
    return any(s.ports for s in app.services)
