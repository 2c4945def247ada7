"""Autostop in ``fleet-agent serve``: idle machines of auto-stop apps are stopped.

A supervisor ticker. Every few seconds it reads HAProxy's ``show stat`` (per
server: current sessions, seconds since the last one), asks the pure
:func:`providers.proxy.autostop.decide` which of this host's machines have
been idle for the agent's ``autostop_idle_s``, and stops them through the
machine kind, as many per pass as qualify (an app's ``auto_stop_after``
overrides the agent's idle time: the reconciler puts it in the machine spec).
The floor: the reconciler puts the app's ``min_machines_running`` in each
machine's spec too, and the first that many slots of each region (``ams#1``...)
never stop, so the hosts of a region keep the floor without talking to each
other.

Stopping one machine, under the waker's lock (a request arriving meanwhile
waits for the stop to finish, then wakes the machine: no request is lost):

1. the inventory entry is marked ``stopped_by: autostop``, so the supervisor
   does not restart it whatever its restart policy (the mark goes when the
   machine runs again);
2. the edge is rebuilt with the app counted as stopped, which enables the
   waker (the route's first backup);
3. HAProxy is told the machine's servers are down (``set server ... health
   down``), so new requests go to another machine or the waker at once,
   not after the health checks notice;
4. the VM is stopped (its kill signal, then its kill timeout).

The planner treats a stopped machine of an app with ``auto_stop_machines`` as
intended, not as drift (``reconcile plan`` shows a no-op with the reason), so
the next ``reconcile apply`` leaves it stopped; inventory etags do not change.
``suspend`` stops too: the hypervisor drivers cannot snapshot a VM yet.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from fleet import model
from fleet.errors import FleetError
from hostagent import edge as edge_mod
from hostagent import handlers as H
from hostagent import supervisor
from hostagent.inventory import Inventory
from providers.proxy import autostop, runtime
from providers.proxy import table as t

log = logging.getLogger(__name__)
Json = Any
STOPPED_BY, AUTOSTOP = supervisor.AUTOSTOPPED
EVERY_S = 2.0


@runtime_checkable
class Stops(Protocol):
    """The machine kind's stop (the waker uses its start)."""

    def stop(self, rid: str) -> None: ...


def autostopped(status: Mapping[str, Json]) -> bool:
    """Whether the inventory status says autostop stopped this machine (leave it stopped)."""
    return status.get(STOPPED_BY) == AUTOSTOP


class AutoStopper:
    """The ticker: stops this host's idle machines of auto-stop apps."""

    def __init__(
        self,
        routes: edge_mod.RouteHandler,
        inventory: Inventory,
        machines: H.Handler,
        lock: threading.Lock,
        *,
        idle_after_s: float,
        every_s: float = EVERY_S,
    ) -> None:
        self.routes = routes
        self.inventory = inventory
        self.machines = machines
        self.lock = lock
        self.idle_after_s = idle_after_s
        self.every_s = every_s
        self._next = 0.0

    def __call__(self, now: float) -> list[str]:
        if now < self._next:
            return []
        self._next = now + self.every_s
        table = self.routes.edge.saved()
        local = self._local_machines()
        if table is None or not local:
            return []
        with self._session() as session:
            stats = session.stat()
        decisions = autostop.decide(
            policies(local), only_local(table, set(local)), stats, idle_after_s=self.idle_after_s
        )
        done = []
        for d in decisions:
            rid, spec = local[d.machine]
            if self._stop(rid, spec, table, d):
                done.append(f"autostop {rid} ({d.reason})")
        return done

    def _session(self) -> runtime.AdminSession:
        return runtime.AdminSession(self.routes.edge.paths.options().admin_socket, 2.0)

    def _local_machines(self) -> dict[str, tuple[str, Mapping[str, Json]]]:
        """This host's machines of auto-stop apps, by slot id (``web/ams#1``)."""
        out: dict[str, tuple[str, Mapping[str, Json]]] = {}
        for (kind, rid), entry in self.inventory.read().entries.items():
            if kind != "machine" or entry.status.get("pending"):
                continue
            if entry.spec.get("auto_stop", "off") == model.AutoStop.OFF.value:
                continue
            out[rid.partition("@")[0]] = (rid, entry.spec)
        return out

    def _stop(
        self, rid: str, spec: Mapping[str, Json], table: t.RoutingTable, d: autostop.Decision
    ) -> bool:
        app = str(spec.get("app", ""))
        with self.lock:  # the waker's: a wake waits for this stop, then starts the machine
            if self.machines.observe(rid, spec).state != "running":
                return False
            self._mark(rid)
            try:
                self.routes.change({}, _quiet, lambda: self.routes.stopped_apps() | {app})
                self._servers_down(table, d.machine)
                stopper = self.machines
                if not isinstance(stopper, Stops):
                    raise FleetError(f"autostop: the machine kind cannot stop {rid}")
                stopper.stop(rid)
            except Exception:
                self._mark(rid, False)  # it may still run: the supervisor keeps watching it
                raise
        log.info(json.dumps({"event": "autostop", "machine": rid, "reason": d.reason}))
        return True

    def _mark(self, rid: str, stopped: bool = True) -> None:
        with self.inventory.transaction() as state:
            entry = state.get("machine", rid)
            if entry is None:
                return
            status = {k: v for k, v in entry.status.items() if k != STOPPED_BY}
            entry.status = {**status, STOPPED_BY: AUTOSTOP} if stopped else status

    def _servers_down(self, table: t.RoutingTable, machine: str) -> None:
        with self._session() as session:
            edge_mod.servers_down(session, edge_mod.machine_servers(table, {machine}))


def policies(local: Mapping[str, tuple[str, Mapping[str, Json]]]) -> dict[str, autostop.Policy]:
    """Each app's policy from its local machines' specs: the action, and its pinned slots."""
    out: dict[str, autostop.Policy] = {}
    for slot_id, (_, spec) in sorted(local.items()):
        app = str(spec.get("app", ""))
        after = spec.get("auto_stop_after_s")
        rule = out.get(app) or autostop.Policy(
            model.AutoStop(spec.get("auto_stop", "stop")),
            idle_after_s=None if after is None else float(after),
        )
        floor = int(spec.get("min_machines_running", 0))
        if autostop.pinned_slot(str(spec.get("slot", slot_id)), floor):
            rule = replace(rule, pinned=rule.pinned | {slot_id})
        out[app] = rule
    return out


def only_local(table: t.RoutingTable, machines: set[str]) -> t.RoutingTable:
    """``table`` with only the servers of ``machines`` (the region's other hosts stop theirs)."""
    routes = tuple(
        replace(r, servers=tuple(s for s in r.servers if s.machine in machines))
        for r in table.routes
    )
    return replace(table, routes=routes)


def _quiet(kind: str, message: str) -> None:
    return None
