"""The ``bgp`` kind (id ``bird``): this host's BIRD 2, peering with its region's upstreams.

The spec says who BIRD is (router id, ASN), whom it peers with (the Region's
upstream peers) and which pools it may ever export (the Network's anycast
pools). *What* it announces is not in this spec: that is the announcer's
moment-to-moment decision (:mod:`hostagent.announcer`), kept in
``announce.json``. :meth:`BirdDaemon.sync` joins the two, renders the config
(:func:`providers.network.bgp.render_bird`, which refuses anything outside
the pools) and makes it live with ``birdc configure``, only when the text
changed, never by a restart.

BIRD runs in its own session (it outlives ``fleet-agent apply``) with its
control socket in the agent's data directory: ``birdc -s
/var/lib/fleet-agent/bird/bird.ctl show route``. The supervisor's
:meth:`BirdDaemon.tick` starts it again if it died.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from fleet.errors import ProviderError
from hostagent import handlers as H
from hostagent import netlock
from hostagent.inventory import Inventory
from providers.network import bgp, birdctl, netexec

log = logging.getLogger(__name__)
Json = Any
KIND = "bgp"
RESOURCE_ID = "bird"
ANNOUNCE_FILE = "announce.json"


def read_announced(data_dir: Path) -> dict[str, Json]:
    """The announcer's last decision per app (``announce.json``; empty when none yet)."""
    try:
        raw = json.loads((data_dir / ANNOUNCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    apps = raw.get("apps") if isinstance(raw, dict) else None
    return apps if isinstance(apps, dict) else {}


def announcements_of(apps: Mapping[str, Json]) -> tuple[bgp.Announcement, ...]:
    """What BIRD must export, from the announcer's decisions (pure)."""
    out = []
    for app, info in sorted(apps.items()):
        export = info.get("export")
        if export is None:
            continue
        for prefix in info.get("prefixes") or []:
            out.append(bgp.Announcement(ipaddress.ip_network(prefix), app, bgp.Export(export)))
    return tuple(sorted(out, key=lambda a: (a.prefix.version, a.prefix)))


def bird_config(
    host: str,
    spec: Mapping[str, Json],
    announcements: Iterable[bgp.Announcement],
    timers: bgp.BgpTimers,
) -> bgp.BirdConfig:
    """The typed config from the spec and the announcements (pure; validated at render)."""
    return bgp.BirdConfig(
        host=host,
        router_id=ipaddress.IPv4Address(str(spec["router_id"])),
        local_asn=int(spec["asn"]),
        neighbors=tuple(
            bgp.Neighbor(str(n["name"]), ipaddress.ip_address(str(n["address"])), int(n["asn"]))
            for n in spec.get("neighbors") or []
        ),
        pools=tuple(ipaddress.ip_network(str(p)) for p in spec.get("pools") or []),
        announcements=tuple(announcements),
        timers=timers,
    )


class BirdDaemon:
    """The ``bgp`` handler; also the supervisor ticker that restarts a dead BIRD."""

    kind = KIND

    def __init__(
        self,
        data_dir: Path,
        host: str,
        timers: bgp.BgpTimers,
        inventory: Inventory | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.timers = timers
        self.inventory = inventory
        self.bird = birdctl.Bird(data_dir / "bird", None)

    def alive(self) -> bool:
        if not self.bird.socket.exists():
            return False
        result = netexec.run(
            ["birdc", "-s", str(self.bird.socket), "show", "status"], check=False, timeout=5
        )
        return result.returncode == 0 and "Daemon is up and running" in result.stdout

    def _spec(self) -> Mapping[str, Json] | None:
        if self.inventory is None:
            return None
        entry = self.inventory.read().get(KIND, RESOURCE_ID)
        return entry.spec if entry is not None and entry.spec else None

    def sync(
        self,
        spec: Mapping[str, Json] | None = None,
        announcements: Iterable[bgp.Announcement] | None = None,
    ) -> str:
        """Make BIRD run ``spec`` with ``announcements`` (defaults: inventory, announce.json).

        Returns what happened: ``started``, ``configured``, ``unchanged`` or
        ``no bgp`` (this host has no ``bgp`` resource: nothing to announce with).
        The caller holds :func:`hostagent.netlock.held`.
        """
        spec = spec if spec is not None else self._spec()
        if spec is None:
            return "no bgp"
        if announcements is None:
            announcements = announcements_of(read_announced(self.data_dir))
        text = bgp.render_bird(bird_config(self.host, spec, announcements, self.timers))
        if not self.alive():
            with contextlib.suppress(FileNotFoundError):
                self.bird.socket.unlink()
            self.bird = birdctl.start(self.bird.directory, text, None, detach=True)
            return "started"
        return "configured" if birdctl.apply_config(self.bird, text) else "unchanged"

    # ------------------------------------------------------------- Handler

    def create(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        with netlock.held(self.data_dir):
            emit("bird", self.sync(spec))

    def update(
        self, rid: str, old: Mapping[str, Json], spec: Mapping[str, Json], emit: H.Emit
    ) -> None:
        self.create(rid, spec, emit)

    def start(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        self.create(rid, spec, emit)

    def delete(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        with netlock.held(self.data_dir):
            try:
                pid = int(self.bird.pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            emit("bird", f"stopped (pid {pid})")

    def observe(self, rid: str, spec: Mapping[str, Json]) -> H.Observed:
        if not self.alive():
            return H.Observed(state=None, health="critical", runtime={"detail": "BIRD not running"})
        try:
            protocols = birdctl.protocols(self.bird)
        except ProviderError as exc:
            return H.Observed(state="failed", health="critical", runtime={"detail": str(exc)})
        sessions = {p.name: p.info or p.state for p in protocols if p.proto == "BGP"}
        up = all(p.established for p in protocols if p.proto == "BGP")
        return H.Observed(
            state="running",
            health="passing" if up else "critical",
            runtime={"sessions": sessions},
        )

    def healthy(self, rid: str, spec: Mapping[str, Json]) -> bool:
        return self.observe(rid, spec).health == "passing"

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return []

    # ------------------------------------------------------------- supervisor

    def tick(self, now: float) -> list[str]:
        """Start BIRD again if it died (skipped while an apply changes it)."""
        entry = netlock.settled(self.inventory, KIND, RESOURCE_ID)
        if entry is None or self.alive():
            return []
        with netlock.held(self.data_dir):
            what = self.sync(entry.spec)
        log.info(json.dumps({"event": "bird", "message": f"BIRD was not running: {what}"}))
        return [f"bird: {what}"]
