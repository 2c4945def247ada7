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
    """Per-host waker: one listener per auto-start route, one start per wake.

    A woken machine meets every held connection at once, often while it still
    boots under load. A small server's listen queue overflows (busybox httpd
    listens with a backlog of 9); the kernel then drops SYNs or the final ACK
    and the client side backs off exponentially (1, 3, 7, 15, 31 s...), so one
    held request can wait past every timeout: the lab saw 1 curl in 100 get
    no answer. So connections reach the machine ``burst`` at a time per route
    (each holds its place until the machine's first bytes come back, or
    ``burst_hold_s``, so long-lived connections do not block the rest), and
    each connect attempt is cut at ``attempt_s`` and retried fresh instead of
    waiting out the kernel's back-off.
    """

    def __init__(
        self,
        start: StartMachine,
        *,
        start_timeout_s: float = 30.0,
        poll_s: float = 0.05,
        burst: int = 8,
        burst_hold_s: float = 2.0,
        attempt_s: float = 1.0,
        backlog: int = 1024,
    ) -> None:
        self._start_machine = start
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self.burst = burst
        self.burst_hold_s = burst_hold_s
        self.attempt_s = attempt_s
        self.backlog = backlog
        self.starts: dict[str, int] = {}
        self._servers: dict[tuple[str, int], tuple[str, asyncio.Server]] = {}
        self._targets: dict[str, Target] = {}
        self._starting: dict[str, asyncio.Task[Target]] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}

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
                    functools.partial(self._handle, name), key[0], key[1], backlog=self.backlog
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
        gate = self._gates.setdefault(route, asyncio.Semaphore(self.burst))
        release = _Once(gate.release)
        try:
            up_reader, up_writer = await self._connect(route, gate, release)
        except (WakeError, OSError, TimeoutError) as exc:
            release()
            log.warning("waker: %s could not be woken: %s", route, exc)
            writer.close()
            return
        timer = asyncio.get_running_loop().call_later(self.burst_hold_s, release)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer, release))
        finally:
            timer.cancel()
            release()
            for w in (writer, up_writer):
                w.close()

    async def _connect(
        self, route: str, gate: asyncio.Semaphore, release: _Once
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a running machine of ``route``, holding a place in its gate."""
        known = self._targets.get(route)
        if known is not None and route not in self._starting:
            await gate.acquire()
            try:  # a couple of attempts: a busy machine is not a stopped one
                loop = asyncio.get_running_loop()
                return await self._open(known, loop.time() + 2 * self.attempt_s)
            except (OSError, TimeoutError):  # stopped since (autostop): wake it again
                release()
                release.reset()
        task = self._starting.get(route)
        if task is None:
            task = asyncio.create_task(self._start(route))
            self._starting[route] = task
        target = await asyncio.shield(task)
        await gate.acquire()
        loop = asyncio.get_running_loop()
        return await self._open(target, loop.time() + self.start_timeout_s)

    async def _open(
        self, target: Target, deadline: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect, each attempt cut at ``attempt_s``, until ``deadline`` (one try if past)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(target.address, target.port), self.attempt_s
                )
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(self.poll_s)

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
            try:
                _, w = await self._open(target, deadline)
            except (OSError, TimeoutError):
                raise WakeError(
                    f"{target.address}:{target.port} not listening after {self.start_timeout_s}s"
                ) from None
            w.close()
            self._targets[route] = target
            return target
        finally:
            self._starting.pop(route, None)


class _Once:
    """Call ``fn`` at most once (until :meth:`reset`): a gate's place is given back once."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.fn()

    def reset(self) -> None:
        self.done = False


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: Callable[[], None] | None = None,
) -> None:
    """Copy until EOF; ``first`` is called when the first bytes (or EOF) arrive."""
    try:
        while data := await reader.read(65536):
            if first is not None:
                first()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()  # one side broke: the other cannot be served either
    finally:
        if first is not None:
            first()
