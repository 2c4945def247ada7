"""Wake on request: the asyncio waker behind every auto-start backend.

HAProxy has the waker as the first ``backup`` server of a route whose machines
on this host are stopped, so a request that finds no running machine comes
here instead of failing. The waker holds the connection, asks the agent to
start a machine (once per route, however many requests are waiting: they all
await the same start), waits until the machine accepts connections, then
pipes bytes both ways. It never parses HTTP, so raw TCP services wake the same
way. Once the agent sees the machine healthy it enters the routing table and
HAProxy sends new requests straight to it; the waker is cold path only.

Each route has its own waker port (from the table), which is how the waker
knows which app a connection is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from providers.proxy import table as t

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a started machine listens for this route."""

    address: str
    port: int


StartMachine = Callable[[str], Awaitable[Target]]
"""The agent's callback: start a machine for this route (backend name); say where it listens."""


class WakeError(Exception):
    """Internal: a start failed or timed out; the held connection is closed."""


class Waker:
    """Per-host waker: one listener per auto-start route, one start per wake."""

    def __init__(
        self,
        start: StartMachine,
        *,
        start_timeout_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> None:
        self._start_machine = start
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self.starts: dict[str, int] = {}
        self._servers: dict[tuple[str, int], tuple[str, asyncio.Server]] = {}
        self._targets: dict[str, Target] = {}
        self._starting: dict[str, asyncio.Task[Target]] = {}

    async def update(self, table: t.RoutingTable) -> None:
        """Listen for exactly the table's waker servers (enabled or not: HAProxy decides)."""
        wanted: dict[tuple[str, int], str] = {}
        for route in table.routes:
            for s in route.servers:
                if s.role is t.Role.WAKER:
                    wanted[(s.address, s.port)] = route.name
        for key, (name, server) in list(self._servers.items()):
            if wanted.get(key) != name:
                server.close()
                await server.wait_closed()
                del self._servers[key]
        for key, name in wanted.items():
            if key not in self._servers:
                server = await asyncio.start_server(
                    functools.partial(self._handle, name), key[0], key[1]
                )
                self._servers[key] = (name, server)

    async def close(self) -> None:
        for _, server in self._servers.values():
            server.close()
        for _, server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        for task in self._starting.values():
            task.cancel()

    async def _handle(
        self, route: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await self._connect(route)
        except (WakeError, OSError, TimeoutError) as exc:
            log.warning("waker: %s could not be woken: %s", route, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _connect(self, route: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        known = self._targets.get(route)
        if known is not None and route not in self._starting:
            with contextlib.suppress(OSError):
                return await asyncio.open_connection(known.address, known.port)
        task = self._starting.get(route)
        if task is None:
            task = asyncio.create_task(self._start(route))
            self._starting[route] = task
        target = await asyncio.shield(task)
        return await asyncio.open_connection(target.address, target.port)

    async def _start(self, route: str) -> Target:
        self.starts[route] = self.starts.get(route, 0) + 1
        log.info("waker: starting a machine for %s", route)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        try:
            try:
                target = await asyncio.wait_for(self._start_machine(route), self.start_timeout_s)
            except Exception as exc:
                raise WakeError(f"start failed: {exc}") from exc
            while True:
                try:
                    _, w = await asyncio.open_connection(target.address, target.port)
                except OSError:
                    if loop.time() > deadline:
                        raise WakeError(
                            f"{target.address}:{target.port} not listening "
                            f"after {self.start_timeout_s}s"
                        ) from None
                    await asyncio.sleep(self.poll_s)
                    continue
                w.close()
                self._targets[route] = target
                return target
        finally:
            self._starting.pop(route, None)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()  # one side broke: the other cannot be served either
