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
    lst = (t.Listener("127.0.0.1", 80, False, True),)
    tab = table(
        t.Route("app", 0, t.Mode.HTTP, lst, (t.Server("waker", t.Role.WAKER, "127.0.0.1", wp),))
    )
    loop.run(w.update(tab))

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", wp)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    try:
        assert loop.run(one()) == b""
        assert w.starts == {"be_app_0": 1}
    finally:
        loop.run(w.close())
