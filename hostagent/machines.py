"""The ``machine`` kind: fleet machines as microVMs on this host.

Maps the reconciler's machine spec (docs/protocol.md) onto a
:class:`~providers.vmm.spec.MachineSpec` and drives the
:class:`~providers.vmm.machines.MachineManager`. Machines are IPv6-only on the
fleet's private network, like Fly's 6PN: the guest holds its stable address
as a /128 with a default route via ``fe80::1``; the host side of its tap holds
``fe80::1`` and a /128 route to the guest, so a process on the host (the
supervisor's checks, the proxy, WireGuard) reaches the guest's ports.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from collections.abc import Collection, Mapping
from typing import Any

from fleet.errors import VMMError
from hostagent import handlers as H
from hostagent import health
from providers.vmm import machines as vmm_machines
from providers.vmm import network as vmm_network
from providers.vmm.spec import MachineSpec, MachineState, NetMode, NetworkSpec, VMMKind

log = logging.getLogger(__name__)
Json = Any
GATEWAY = "fe80::1"
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
STATES = {
    MachineState.CREATED: "created",
    MachineState.STARTING: "starting",
    MachineState.RUNNING: "running",
    MachineState.STOPPED: "stopped",
    MachineState.FAILED: "failed",
}


def machine_name(rid: str) -> str:
    """A VMM-safe, stable name for a resource id like ``web/ams#1@ab12cd34``."""
    readable = _UNSAFE.sub("-", rid.lower()).strip("-.")
    digest = hashlib.sha256(rid.encode()).hexdigest()[:8]
    return f"{readable[:50]}-{digest}"


def to_machine_spec(rid: str, spec: Mapping[str, Json], vmm: VMMKind) -> MachineSpec:
    vm = spec.get("vm") or {}
    address = spec.get("address")
    network = NetworkSpec()
    if address:
        network = NetworkSpec(
            mode=NetMode.TAP,
            addresses=(f"{address}/128",),
            host_addresses=(f"{GATEWAY}/64",),
            gateways=(GATEWAY,),
        )
    cmd = spec.get("cmd")
    entrypoint = spec.get("entrypoint")
    return MachineSpec(
        name=machine_name(rid),
        image=str(spec["image"]),
        entrypoint=tuple(entrypoint) if entrypoint is not None else None,
        cmd=tuple(cmd) if cmd is not None else None,
        env=tuple(sorted((str(k), str(v)) for k, v in (spec.get("env") or {}).items())),
        hostname=str(spec.get("app", "machine")),
        cpus=int(vm.get("cpus", 1)),
        memory_mb=int(vm.get("memory_mb", 256)),
        kill_signal=str(spec.get("kill_signal", "SIGINT")),
        kill_timeout=float(spec.get("kill_timeout_s", 5.0)),
        network=network,
        vmm=vmm,
    )


class MachineHandler:
    """The ``machine`` resource kind, backed by real microVMs."""

    kind = "machine"

    def __init__(
        self,
        manager: vmm_machines.MachineManager,
        vmm: VMMKind = VMMKind.QEMU,
        *,
        simulate_gpus: bool = False,
    ) -> None:
        self.manager = manager
        self.vmm = vmm
        self.simulate_gpus = simulate_gpus

    def _exists(self, name: str) -> bool:
        return name in self.manager.names()

    def create(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        gpus = (spec.get("vm") or {}).get("gpus")
        if gpus:
            if not self.simulate_gpus:
                # GPUs need VFIO passthrough (Cloud Hypervisor); never pretend.
                raise VMMError(
                    f"machine wants {gpus.get('count')} x {gpus.get('model')} but this host "
                    f"runs {self.vmm}, which cannot pass GPUs through; use cloud-hypervisor "
                    "with VFIO on a GPU host"
                )
            emit("gpu-simulated", f"booting without {gpus.get('count')} x {gpus.get('model')}")
        mspec = to_machine_spec(rid, spec, self.vmm)
        if not self._exists(mspec.name):
            emit("preparing", f"image {mspec.image}")
            self.manager.create(mspec)
        self.start(rid, spec, emit)

    def start(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        name = machine_name(rid)
        status = self.manager.status(name)
        if status.state not in (MachineState.RUNNING, MachineState.STARTING):
            emit("booting", name)
            self.manager.start(name)
        self._route(name, spec)
        emit("started", name)

    def _route(self, name: str, spec: Mapping[str, Json]) -> None:
        address = spec.get("address")
        if not address:
            return
        tap = vmm_network.tap_name(name)
        result = subprocess.run(
            ["ip", "-6", "route", "replace", f"{address}/128", "dev", tap],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise VMMError(f"machine {name}: route to {address}: {result.stderr.strip()}")

    def update(
        self, rid: str, old: Mapping[str, Json], spec: Mapping[str, Json], emit: H.Emit
    ) -> None:
        # Every field that matters to a running VM forces a replacement (the
        # planner's rules); what remains (checks, restart policy) lives in the
        # inventory and is read by the supervisor: nothing to do here.
        emit("updated", machine_name(rid))

    def delete(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        name = machine_name(rid)
        if not self._exists(name):
            return
        status = self.manager.status(name)
        if status.state in (MachineState.RUNNING, MachineState.STARTING):
            emit("stopping", f"{name} with {spec.get('kill_signal', 'SIGINT')}")
            self.manager.stop(name)
        self.manager.remove(name, force=True)
        emit("removed", name)

    def stop(self, rid: str) -> None:
        name = machine_name(rid)
        if self._exists(name):
            self.manager.stop(name)

    def observe(self, rid: str, spec: Mapping[str, Json]) -> H.Observed:
        name = machine_name(rid)
        if not self._exists(name):
            return H.Observed(state=None, health="unknown", runtime={"detail": "missing"})
        status = self.manager.status(name)
        runtime: dict[str, Json] = {"pid": status.pid, "machine": name}
        if status.exit_code is not None:
            runtime["exit_code"] = status.exit_code
        if status.exit_signal is not None:
            runtime["exit_signal"] = status.exit_signal
        if status.started_at is not None:
            runtime["started_at"] = status.started_at
        return H.Observed(
            state=STATES[status.state],
            health="unknown",
            runtime=runtime,
            actual={"image_digest": status.image_digest},
        )

    def healthy(self, rid: str, spec: Mapping[str, Json]) -> bool:
        name = machine_name(rid)
        if not self._exists(name):
            return False
        if self.manager.status(name).state is not MachineState.RUNNING:
            return False
        address = spec.get("address")
        checks = spec.get("checks") or []
        if not address or not checks:
            return True
        return health.run_checks(str(address), checks)

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        """Machines made by hand (``fleet-agent machine run``): reported, never touched."""
        owned = {machine_name(rid) for rid in managed}
        out = []
        for name in self.manager.names():
            if name not in owned:
                status = self.manager.status(name)
                live = H.Observed(state=STATES[status.state], runtime={"pid": status.pid})
                out.append((name, live))
        return out
