"""The ``wireguard`` kind (id ``mesh``): this host's interface on the fleet's private mesh.

The reconciler sends the host's whole desired peer set (docs/network.md);
this handler makes the interface match it by diff only:

- *create*: the private key (generated here, 0600, never sent anywhere), the
  interface (kernel module, else ``wireguard-go`` in its own session so it
  outlives ``fleet-agent apply``), the mesh address, the fleet's /48 routed
  into the interface with the mesh address as source, then the peers;
- *update*: ``peer_ops`` (one ``wg set`` per changed peer, a roamed endpoint
  kept), never an interface restart;
- *observe*: ``wg show IFACE dump`` as ``actual`` in the spec's shape: runtime
  fields (handshakes, bytes) left out and a roamed endpoint shown as the
  desired one, so a roam is not drift; reported only when it differs from
  the spec (a no-op plan then compares etags only, even with 1,000 peers);
- the supervisor's :meth:`Mesh.tick` recreates an interface whose
  wireguard-go died and puts back peers changed by hand (self-healing; the
  plan never has to).

Every peer operation is appended to ``wireguard/ops.log`` (one line each):
what an operator reads to see what an apply touched, and what the lab tests
count.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from fleet.errors import ProviderError
from hostagent import handlers as H
from hostagent import netlock
from hostagent.inventory import Inventory
from providers.network import netexec, wgdriver, wgkeys, wireguard

log = logging.getLogger(__name__)
Json = Any
KIND = "wireguard"
RESOURCE_ID = "mesh"
KEY_NAME = "mesh"


def peers_of(spec: Mapping[str, Json]) -> dict[str, wireguard.Peer]:
    """The spec's peer list as the pure diff wants it, by public key."""
    out = {}
    for p in spec.get("peers") or []:
        peer = wireguard.Peer(
            host=str(p["host"]),
            public_key=str(p["public_key"]),
            endpoint=p.get("endpoint"),
            allowed_ips=wireguard.canonical_ips(p.get("allowed_ips") or []),
            keepalive=int(p.get("keepalive", wireguard.DEFAULT_KEEPALIVE)),
        )
        out[peer.public_key] = peer
    return out


def actual_of(
    spec: Mapping[str, Json], live: wireguard.ObservedInterface, routed: bool
) -> dict[str, Json]:
    """The live interface in the spec's shape (pure): equal to ``spec`` when nothing drifted."""
    wanted = peers_of(spec)
    peers = []
    for key, have in sorted(live.peers.items()):
        want = wanted.get(key)
        endpoint = have.endpoint
        if want is not None and endpoint is not None and want.endpoint != endpoint:
            endpoint = want.endpoint  # learned by WireGuard from the peer: a roam, not drift
        peers.append(
            {
                "host": want.host if want is not None else "?",
                "public_key": key,
                "endpoint": endpoint,
                "allowed_ips": list(have.allowed_ips),
                "keepalive": have.keepalive,
            }
        )
    peers.sort(key=lambda p: (p["host"], p["public_key"]))
    actual = {k: v for k, v in spec.items() if k != "peers"}
    if live.listen_port != int(spec.get("listen_port", 0)):
        actual["listen_port"] = live.listen_port
    if not routed:
        actual["routes"] = []
    actual["peers"] = peers
    return actual


class Mesh:
    """The ``wireguard`` handler; also the supervisor ticker that keeps it alive."""

    kind = KIND

    def __init__(self, data_dir: Path, host: str, inventory: Inventory | None = None) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "wireguard"
        self.host = host
        self.inventory = inventory
        # the own prefix this process routed `unreachable` (wgdriver.configure); the
        # first tick routes it on a host whose interface an older agent made
        self._unreachable: ipaddress.IPv6Network | None = None

    # ------------------------------------------------------------- the key

    def public_key(self) -> str:
        """This host's public key, generating the private key on first use."""
        return wgkeys.ensure_key(self.dir, KEY_NAME).value

    @property
    def key_file(self) -> Path:
        return wgkeys.key_path(self.dir, KEY_NAME)

    # ------------------------------------------------------------- the interface

    @property
    def state_file(self) -> Path:
        return self.dir / "interface.json"

    def _iface(self, name: str) -> wgdriver.WgInterface | None:
        if netexec.run(["ip", "link", "show", "dev", name], check=False).returncode != 0:
            return None
        try:
            state = json.loads(self.state_file.read_text())
            backend = wgdriver.Backend(state.get("backend", "kernel"))
        except (OSError, ValueError):
            backend = wgdriver.Backend.KERNEL
        return wgdriver.WgInterface(name, None, backend)

    def _create(self, spec: Mapping[str, Json]) -> wgdriver.WgInterface:
        name = str(spec["interface"])
        self.public_key()
        with contextlib.suppress(FileNotFoundError):  # a dead wireguard-go's socket
            (wgdriver.SOCKET_DIR / f"{name}.sock").unlink()
        iface = wgdriver.create_interface(name, log_file=self.dir / "wireguard-go.log", detach=True)
        self.state_file.write_text(
            json.dumps({"name": name, "backend": iface.backend.value, "pid": iface.pid})
        )
        self._configure(iface, spec)
        return iface

    def _configure(self, iface: wgdriver.WgInterface, spec: Mapping[str, Json]) -> None:
        mesh = ipaddress.IPv6Address(str(spec["address"]))
        wgdriver.configure(
            iface,
            private_key=self.key_file,
            listen_port=int(spec["listen_port"]),
            mesh_address=mesh,
            routes=[ipaddress.IPv6Network(str(r)) for r in spec.get("routes") or []],
            source=mesh,
            unreachable=_own_prefix(spec),
        )
        self._unreachable = _own_prefix(spec)

    def _peers(
        self,
        iface: wgdriver.WgInterface,
        spec: Mapping[str, Json],
        last: Mapping[str, Json] | None,
        why: str,
    ) -> int:
        live = wgdriver.observe(iface)
        previous = peers_of(last) if last is not None else None
        ops = wireguard.peer_ops(peers_of(spec), live.peers, previous)
        if not ops:
            return 0
        count = wgdriver.apply_ops(iface, ops)
        with (self.dir / "ops.log").open("a") as f:
            for op in ops:
                f.write(f"{time.time():.3f} {why} {op.kind} {op.host or '?'} {op.public_key}\n")
        return count

    def _ensure(
        self, spec: Mapping[str, Json], last: Mapping[str, Json] | None, why: str
    ) -> tuple[bool, int]:
        """Interface up and configured, peers as ``spec`` says; (created?, peer ops run)."""
        with netlock.held(self.data_dir):
            iface = self._iface(str(spec["interface"]))
            created = iface is None
            if iface is None:
                iface = self._create(spec)
                last = None
            elif last is None or _base(last) != _base(spec):
                self._configure(iface, spec)
            return created, self._peers(iface, spec, last, why)

    # ------------------------------------------------------------- Handler

    def create(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        created, ops = self._ensure(spec, None, "create")
        emit("mesh", f"{spec['interface']} {'created' if created else 'present'}, {ops} peer ops")

    def update(
        self, rid: str, old: Mapping[str, Json], spec: Mapping[str, Json], emit: H.Emit
    ) -> None:
        if spec.get("stage_next_key"):  # key rotation, stage 1 (reconciler/rotate.py)
            emit("next-key", wgkeys.ensure_key(self.dir, KEY_NAME, staged=True).value)
        if spec.get("key"):  # key rotation, stage 3: take the staged key
            self._switch(str(spec["key"]), spec)
            emit("mesh", f"{spec['interface']} now uses key {str(spec['key'])[:8]}")
        created, ops = self._ensure(spec, old, "update")
        emit("mesh", f"{spec['interface']}: {ops} peer ops" + (" (recreated)" if created else ""))

    def start(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        self.update(rid, spec, spec, emit)

    def _switch(self, want: str, spec: Mapping[str, Json]) -> None:
        """The interface takes the staged key, which then becomes the current one."""
        with netlock.held(self.data_dir):
            if wgkeys.public_key(self.dir, KEY_NAME) == wgkeys.PublicKey(want):
                return  # already switched (a retried action)
            if wgkeys.public_key(self.dir, KEY_NAME, staged=True) != wgkeys.PublicKey(want):
                raise ProviderError(f"key {want[:8]} is neither this host's current nor staged key")
            iface = self._iface(str(spec["interface"]))
            if iface is not None:
                wgdriver.switch_private_key(iface, wgkeys.key_path(self.dir, KEY_NAME, staged=True))
            wgkeys.promote_next(self.dir, KEY_NAME)

    def delete(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        name = str(spec.get("interface", ""))
        with netlock.held(self.data_dir):
            iface = self._iface(name) if name else None
            if iface is None:
                return
            if iface.backend is wgdriver.Backend.KERNEL:
                wgdriver.destroy(iface)
            else:
                _end(self.state_file)
            own = _own_prefix(spec)
            if own is not None:
                wgdriver.drop_unreachable(own)
            emit("mesh", f"{name} removed")

    def observe(self, rid: str, spec: Mapping[str, Json]) -> H.Observed:
        name = str(spec.get("interface", ""))
        iface = self._iface(name) if name else None
        if iface is None:
            return H.Observed(state=None, health="critical", runtime={"detail": "no interface"})
        try:
            live = wgdriver.observe(iface)
        except ProviderError as exc:
            return H.Observed(state="failed", health="critical", runtime={"detail": str(exc)})
        actual = actual_of(spec, live, _routed(name, spec))
        shaken = sum(1 for p in live.peers.values() if p.latest_handshake)
        return H.Observed(
            state="running",
            health="passing",
            runtime={
                "backend": iface.backend.value,
                "peers": len(live.peers),
                "handshakes": shaken,
            },
            # Equal to the spec: say nothing, so a no-op plan compares etags only.
            actual=None if actual == dict(spec) else actual,
        )

    def healthy(self, rid: str, spec: Mapping[str, Json]) -> bool:
        return self.observe(rid, spec).state == "running"

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return []

    # ------------------------------------------------------------- supervisor

    def tick(self, now: float) -> list[str]:
        """Recreate a dead interface, put back hand-changed peers (skipped mid-apply)."""
        entry = netlock.settled(self.inventory, KIND, RESOURCE_ID)
        if entry is None:
            return []
        created, ops = self._ensure(entry.spec, entry.spec, "repair")
        done = [f"mesh: recreated {entry.spec['interface']}"] if created else []
        own = _own_prefix(entry.spec)
        if own is not None and own != self._unreachable:
            wgdriver.route_unreachable(own)
            self._unreachable = own
            done.append(f"mesh: {own} unreachable where no machine runs")
        if ops:
            done.append(f"mesh: {ops} peer ops to match the last apply")
        for line in done:
            log.info(json.dumps({"event": "mesh", "message": line}))
        return done


def _own_prefix(spec: Mapping[str, Json]) -> ipaddress.IPv6Network | None:
    """The host's /64: its machines' addresses, refused when no machine holds one."""
    prefix = spec.get("prefix")
    return ipaddress.IPv6Network(str(prefix)) if prefix else None


def _base(spec: Mapping[str, Json]) -> dict[str, Json]:
    return {k: v for k, v in spec.items() if k != "peers"}


def _routed(name: str, spec: Mapping[str, Json]) -> bool:
    out = netexec.run(["ip", "-6", "route", "show", "dev", name], check=False).stdout
    have = {line.split()[0] for line in out.splitlines() if line.strip()}
    return all(str(r) in have for r in spec.get("routes") or [])


def _end(state_file: Path) -> None:
    """Stop the wireguard-go this agent started (its PID is recorded); its interface goes."""
    try:
        pid = int(json.loads(state_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    state_file.unlink(missing_ok=True)
