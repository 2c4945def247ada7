"""The ``announcement`` kind: an app's anycast addresses, announced from here while healthy.

The resource (one per app, planned by the reconciler) says "this host may
announce these prefixes". Whether it does *right now* is decided every
supervisor pass by :meth:`Announcer.tick`, the only writer of that decision:

- the gate: the host's edge proxy is healthy and at least one healthy machine
  of the app is reachable (:class:`hostagent.edgehealth.EdgeHealth`, given to
  the constructor: ``LocalMachines`` until the edge proxy provides one);
- the state machine of :mod:`providers.network.announce`: unhealthy ->
  withdrawn at once; withdrawn -> announced after ``hold_down_s`` of health;
  a planned withdraw -> 65535:0 for ``grace_s``, then withdrawn (every
  announcement at once when the BIRD spec says ``withdraw_all``: the host is
  cordoned);
- BIRD's config is rendered with the result and ``birdc configure``d only
  when its text changed (:meth:`hostagent.bird.BirdDaemon.sync`).

The handler's part: create/update put the addresses on ``lo`` (the host must
accept traffic for what it announces: the proxy binds them); delete is the
planned withdraw: it marks the resource leaving (the agent's ``pending``),
waits until the ticker has gone through the grace period and withdrawn the
route, then takes the addresses off ``lo``.

Decisions go to ``announce.json`` (phase and export per app, the last
transitions with wall-clock times): observe reports them, BIRD's renderer
reads them, and an agent that restarts adopts what was announced.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from hostagent import bird as bird_mod
from hostagent import handlers as H
from hostagent import netlock
from hostagent.edgehealth import EdgeHealth
from hostagent.inventory import Inventory
from providers.network import announce, netexec

log = logging.getLogger(__name__)
Json = Any
KIND = "announcement"
HISTORY = 200  # transitions kept in announce.json
LOOPBACK = "lo"


def prefixes_of(spec: Mapping[str, Json]) -> list[str]:
    return [str(p) for p in spec.get("prefixes") or []]


class Announcer:
    """The ``announcement`` handler; its :meth:`tick` is a supervisor ticker."""

    kind = KIND

    def __init__(
        self,
        data_dir: Path,
        inventory: Inventory,
        edge: EdgeHealth,
        daemon: bird_mod.BirdDaemon,
        timers: announce.AnnounceTimers,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.data_dir = data_dir
        self.inventory = inventory
        self.edge = edge
        self.daemon = daemon
        self.timers = timers
        self.clock = clock
        self.sleep = sleep
        self.states: dict[str, announce.AnnounceState] | None = None
        self.prefixes: dict[str, list[str]] = {}
        self.history: list[dict[str, Json]] = []
        self.saved: dict[str, Json] | None = None

    @property
    def state_file(self) -> Path:
        return self.data_dir / bird_mod.ANNOUNCE_FILE

    # ------------------------------------------------------------- Handler

    def create(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        for prefix in prefixes_of(spec):
            _address(prefix, "replace")
        emit("announcement", f"{rid}: on {LOOPBACK}; announced once healthy for the hold-down")

    def update(
        self, rid: str, old: Mapping[str, Json], spec: Mapping[str, Json], emit: H.Emit
    ) -> None:
        for prefix in set(prefixes_of(old)) - set(prefixes_of(spec)):
            _address(prefix, "del")
        self.create(rid, spec, emit)

    def start(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        self.create(rid, spec, emit)

    def delete(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        """The planned withdraw: the ticker tags 65535:0 for the grace period, then withdraws."""
        if self._exported(rid):
            emit("graceful", f"{rid}: graceful shutdown for {self.timers.grace_s:g}s")
        deadline = self.clock() + self.timers.grace_s + 5.0
        while self._exported(rid) and self.clock() < deadline:
            self.sleep(0.1)
        if self._exported(rid):
            emit(
                "withdraw", f"{rid}: the supervisor did not withdraw it; is `fleet-agent serve` up?"
            )
        for prefix in prefixes_of(spec):
            _address(prefix, "del")
        emit("withdrawn", rid)

    def _exported(self, app: str) -> bool:
        info = bird_mod.read_announced(self.data_dir).get(app)
        return bool(info and info.get("export"))

    def observe(self, rid: str, spec: Mapping[str, Json]) -> H.Observed:
        info = bird_mod.read_announced(self.data_dir).get(rid) or {}
        phase = str(info.get("phase", announce.Phase.WITHDRAWN.value))
        exported = info.get("export")
        return H.Observed(
            state=None,
            health="passing" if exported == "announce" else "critical",
            runtime={"phase": phase, "export": exported},
        )

    def healthy(self, rid: str, spec: Mapping[str, Json]) -> bool:
        return self.observe(rid, spec).health == "passing"

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return []

    # ------------------------------------------------------------- supervisor

    def _adopt(self, now: float) -> dict[str, announce.AnnounceState]:
        """After a restart: what was exported stays announced (no needless withdraw)."""
        states = {}
        for app, info in bird_mod.read_announced(self.data_dir).items():
            if info.get("export"):
                states[app] = announce.AnnounceState.announced(now)
                self.prefixes[app] = [str(p) for p in info.get("prefixes") or []]
        return states

    def tick(self, now: float) -> list[str]:
        """Step every app's announcement and make BIRD say the result."""
        held = self.inventory.read().entries
        entries = {rid: e for (kind, rid), e in held.items() if kind == KIND}
        bird_entry = held.get((bird_mod.KIND, bird_mod.RESOURCE_ID))
        if self.states is None:
            self.states = self._adopt(now)
        for app, entry in entries.items():
            self.prefixes[app] = prefixes_of(entry.spec)
        proxy = self.edge.proxy_healthy()
        backends = self.edge.healthy_backends()
        if bird_entry is not None and (bird_entry.spec or {}).get("withdraw_all"):
            leaving = frozenset(entries)  # the host is cordoned: every announcement leaves
        else:
            leaving = frozenset(
                a for a, e in entries.items() if e.status.get("pending") == "delete"
            )
        healthy = {app: proxy and backends.get(app, 0) >= 1 for app in entries}
        before = self.states
        after, exports = announce.step_all(
            before, healthy=healthy, draining=leaving, now=now, timers=self.timers
        )
        self.states = after
        done = []
        for app in sorted(set(before) | set(after)):
            old = before.get(app, announce.AnnounceState.initial()).phase
            new = after.get(app, announce.AnnounceState.initial()).phase
            if old != new:
                done.append(f"announce {app}: {old} -> {new}")
                since = after[app].since if app in after else now
                # ``since``: the supervisor's clock when the state machine moved
                # (what hold-down and grace count in); ``at``: wall time of the record.
                self.history.append(
                    {"app": app, "phase": new.value, "since": since, "at": time.time()}
                )
        del self.history[:-HISTORY]
        apps = {
            app: {
                "phase": state.phase.value,
                "export": exports[app].value if app in exports else None,
                "prefixes": self.prefixes.get(app, []),
            }
            for app, state in after.items()
        }
        with netlock.held(self.data_dir):
            if apps != self.saved or done:
                self._save(apps)
            result = self.daemon.sync(announcements=bird_mod.announcements_of(apps))
        if result in ("configured", "started"):
            done.append(f"bird {result}")
        for line in done:
            log.info(json.dumps({"event": "announce", "message": line}))
        return done

    def _save(self, apps: Mapping[str, Json]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"apps": apps, "history": self.history}, indent=1))
        os.replace(tmp, self.state_file)
        self.saved = dict(apps)


def _address(prefix: str, verb: str) -> None:
    """Put an anycast address on (``replace``) or take it off (``del``) the loopback."""
    net = ipaddress.ip_network(prefix)
    extra = ["nodad"] if net.version == 6 and verb != "del" else []
    netexec.run(
        ["ip", f"-{net.version}", "addr", verb, str(net), "dev", LOOPBACK, *extra],
        check=verb != "del",
    )
