"""Wake on request through real HAProxy: 100 concurrent requests, one start, no failure."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from providers.proxy import proxy, waker
from providers.proxy import table as t
from tests.proxy.conftest import HTTPD, Backends, free_port, get, server, table


class LoopThread:
    """An asyncio loop in a thread, as the agent runs the waker beside its other work."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


def waker_only(port: int) -> t.RoutingTable:
    """A table whose one route has only the waker, listening on ``port``."""
    lst = (t.Listener("127.0.0.1", 80, False, True),)
    waker_server = t.Server("waker", t.Role.WAKER, "127.0.0.1", port)
    return table(t.Route("app", 0, t.Mode.HTTP, lst, (waker_server,)))


async def ask(port: int, request: bytes, timeout: float) -> bytes:
    """Send ``request`` to the waker on ``port``; everything it answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return data


def test_hundred_requests_to_a_stopped_app_start_it_once(
    edge: proxy.EdgeProxy, backends: Backends, loop: LoopThread
) -> None:
    port, waker_port, machine_port = free_port(), free_port(), free_port()
    calls: list[str] = []

    async def start(route: str) -> waker.Target:
        calls.append(route)
        await asyncio.sleep(0.3)  # a machine takes a while to boot ...
        proc = subprocess.Popen(
            [sys.executable, str(HTTPD), str(machine_port), "woken"],
            stdout=subprocess.PIPE,
            text=True,
        )
        backends.procs["woken"], backends.ports["woken"] = proc, machine_port
        return waker.Target("127.0.0.1", machine_port)  # ... and to listen

    w = waker.Waker(start, start_timeout_s=10)
    lst = (t.Listener("127.0.0.1", port, False, True),)
    sleeping = table(
        t.Route(
            "app", 0, t.Mode.HTTP, lst, (t.Server("waker", t.Role.WAKER, "127.0.0.1", waker_port),)
        )
    )
    loop.run(w.update(sleeping))
    edge.start(sleeping)
    try:
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda _: get(port, "/", timeout=20), range(100)))
        assert [a[0] for a in answers].count(200) == 100
        assert {a[2] for a in answers} == {b"woken\n"}
        assert calls == ["be_app_0"] and w.starts == {"be_app_0": 1}

        # the agent sees the machine healthy: it enters the table, the waker steps aside
        awake = table(
            t.Route(
                "app",
                0,
                t.Mode.HTTP,
                lst,
                (
                    server("sea.1", machine_port),
                    t.Server("waker", t.Role.WAKER, "127.0.0.1", waker_port, enabled=False),
                ),
            )
        )
        assert edge.apply(awake).method is proxy.Method.RUNTIME
        for _ in range(10):
            assert get(port)[0] == 200
        totals = {s.name: s.total for s in edge.session.stat() if s.backend == "be_app_0"}
        assert totals["sea.1"] == 10 and totals["waker"] == 100
    finally:
        loop.run(w.close())


def test_a_failed_start_closes_held_connections_without_hanging(loop: LoopThread) -> None:
    async def start(route: str) -> waker.Target:
        raise RuntimeError("no capacity")

    w = waker.Waker(start, start_timeout_s=2)
    wp = free_port()
    loop.run(w.update(waker_only(wp)))
    try:
        assert loop.run(ask(wp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 5)) == b""
        assert w.starts == {"be_app_0": 1}
    finally:
        loop.run(w.close())


def test_a_woken_machine_meets_held_connections_a_few_at_a_time(loop: LoopThread) -> None:
    """A small server's listen queue (busybox httpd: 9) must not overflow on waking.

    The machine here answers each connection after 50 ms and counts how many it
    holds at once; 60 held connections all get their answer, never more than
    ``burst`` of them at the machine at a time.
    """
    machine_port, wp = free_port(), free_port()
    now = {"open": 0, "most": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await reader.readline():  # the waker's probe: is it listening yet?
            writer.close()
            return
        now["open"] += 1
        now["most"] = max(now["most"], now["open"])
        await asyncio.sleep(0.05)
        writer.write(b"woken\n")
        await writer.drain()
        writer.close()
        now["open"] -= 1

    servers: list[asyncio.Server] = []

    async def start(route: str) -> waker.Target:
        servers.append(await asyncio.start_server(serve, "127.0.0.1", machine_port, backlog=9))
        return waker.Target("127.0.0.1", machine_port)

    async def stop() -> None:
        for listening in servers:
            listening.close()
            await listening.wait_closed()
        await w.close()

    w = waker.Waker(start, start_timeout_s=10, burst=4)
    loop.run(w.update(waker_only(wp)))

    async def many() -> list[bytes]:
        return list(await asyncio.gather(*(ask(wp, b"hello\n", 20) for _ in range(60))))

    try:
        assert loop.run(many()) == [b"woken\n"] * 60
        assert w.starts == {"be_app_0": 1}
        assert 1 <= now["most"] <= 4
    finally:
        loop.run(stop())
