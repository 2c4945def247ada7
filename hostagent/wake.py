"""Wake on request in ``fleet-agent serve``: the edge's waker, in its own asyncio thread.

HAProxy has a waker server as the first backup of every auto-start route,
enabled while this host has a stopped machine of the app, and after its start
until HAProxy's checks see it UP (the edge ticker keeps that in step,
:func:`hostagent.edge.still_waking`). :class:`WakeService` runs
:class:`providers.proxy.waker.Waker` behind those servers: a connection that
finds no running machine lands here, the waker starts one stopped local
machine of the app (once, however many connections wait) through the machine
kind, waits until it listens, and pipes the connections through. Once the
machine passes HAProxy's health check, new requests go to it directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from hostagent import edge as edge_mod
from hostagent import handlers as H
from hostagent.inventory import Inventory
from providers.proxy import table as t
from providers.proxy import waker

log = logging.getLogger(__name__)
Json = Any
# A boot under TCG on a loaded 2-core machine took up to ~10 s; leave room, and stay
# below HAProxy's `timeout server` (60 s), which covers the start plus the answer. The
# edge keeps a route's waker on at most this long after the start (edge.WAKE_WINDOW_S).
START_TIMEOUT_S = edge_mod.WAKE_WINDOW_S


class WakeService:
    """The waker's event loop thread, and the supervisor ticker that keeps its listeners."""

    def __init__(
        self,
        edge: edge_mod.Edge,
        inventory: Inventory,
        machines: H.Handler,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.edge = edge
        self.inventory = inventory
        self.machines = machines
        self.loop = asyncio.new_event_loop()
        self.waker = waker.Waker(self._start, start_timeout_s=start_timeout_s)
        self._thread = threading.Thread(target=self.loop.run_forever, name="waker", daemon=True)
        self._listening: tuple[tuple[str, str, int], ...] | None = None
        # one start (or autostop's stop) at a time on this host
        self.lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _close(self) -> None:
        await self.waker.close()
        # let connections still piping finish closing their transports
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        if pending:
            await asyncio.wait(pending, timeout=5)
        await asyncio.sleep(0.05)

    def tick(self, now: float) -> list[str]:
        """Listen on exactly the saved table's waker ports (cheap when they did not change)."""
        table = self.edge.saved()
        wanted = _wakers(table) if table is not None else ()
        if wanted == self._listening or table is None:
            return []
        asyncio.run_coroutine_threadsafe(self.waker.update(table), self.loop).result(5)
        self._listening = wanted
        return [f"waker listening for {len(wanted)} route(s)"]

    async def _start(self, backend: str) -> waker.Target:
        """The waker's callback: start one stopped local machine of the route's app."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._start_blocking, backend)

    def _start_blocking(self, backend: str) -> waker.Target:
        """Start a stopped local machine of the route's app, or join one already on its way.

        The waker stays on after a start until HAProxy sees the machine UP, so
        a request may come here for a machine something else (an apply) just
        started: it waits for that one rather than failing.
        """
        table = self.edge.saved()
        route = table.route(backend) if table is not None else None
        if route is None:
            raise waker.WakeError(f"no route {backend} on this host")
        with self.lock:
            starting = None
            for (kind, rid), entry in sorted(self.inventory.read().entries.items()):
                if kind != "machine" or entry.spec.get("app") != route.app:
                    continue
                state = self.machines.observe(rid, entry.spec).state
                if state in ("starting", "running"):
                    starting = starting or (rid, entry.spec)
                if state != "stopped":
                    continue
                log.info("waker: starting %s for %s", rid, backend)
                self.machines.start(rid, entry.spec, lambda *_: None)
                return waker.Target(str(entry.spec["address"]), _port(entry.spec, route))
        if starting is not None:
            rid, spec = starting
            log.info("waker: %s already started, waiting for it for %s", rid, backend)
            return waker.Target(str(spec["address"]), _port(spec, route))
        raise waker.WakeError(f"no stopped machine of {route.app} on this host")


def _wakers(table: t.RoutingTable) -> tuple[tuple[str, str, int], ...]:
    return tuple(
        (r.name, s.address, s.port)
        for r in table.routes
        for s in r.servers
        if s.role is t.Role.WAKER
    )


def _port(spec: Mapping[str, Json], route: t.Route) -> int:
    services = spec.get("services") or []
    if route.service < len(services):
        return int(services[route.service]["internal_port"])
    server = next((s for s in route.servers if s.role is not t.Role.WAKER), None)
    if server is None:
        raise waker.WakeError(f"{route.name}: no port to reach a machine on")
    return server.port
