"""Waker states on a real HAProxy (loopback) stay matched to the stopped machines (issue #8).

A route's waker is enabled while this host has a stopped machine of the app.
Several processes rebuild the table (apply's route handler, autostop, the
supervisor's ticker), each under the edge lock; the set of stopped apps they
use must be no older than the table they replace, and the ticker must notice
any waker HAProxy holds otherwise than the machines call for.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent import edge
from providers.proxy import runtime, spec
from providers.proxy import table as t
from tests.proxy.conftest import Backends, backends, free_port, get, route, server

__all__ = ["backends"]  # the fixture, shared with tests/proxy

pytestmark = [
    pytest.mark.slow,
    # HAProxy outlives the process that starts it (later ones adopt it by PID), so the
    # Popen object that started it is dropped while it runs
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

WAKER = ("be_web_0", t.WAKER_NAME)


class Machines:
    """The host's machine states, as the agent's ``stopped_apps`` reads them."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def stopped_apps(self) -> frozenset[str]:
        return frozenset(self.stopped)


@pytest.fixture
def host_edge(tmp_path: Path) -> Iterator[edge.Edge]:
    e = edge.Edge(edge.EdgePaths.of(tmp_path), "sea-1")
    yield e
    e.change({"web": None}, frozenset, lambda *_: None)  # the last route: HAProxy stops


def _served(machines: int = 1, port: int = 0) -> dict[str, object]:
    """The app's route spec with this many local machines (none listens: the waker matters)."""
    waker = t.Server(t.WAKER_NAME, t.Role.WAKER, "", 0, enabled=False)
    servers = (*(server(f"sea.{i}", free_port()) for i in range(1, machines + 1)), waker)
    return spec.to_json("web", "sea", [route("web", port or free_port(), servers)])


def _held(e: edge.Edge) -> bool:
    """Whether HAProxy holds the waker enabled (not in maintenance)."""
    with runtime.AdminSession(e.paths.options().admin_socket) as session:
        (state,) = [s for s in session.servers_state() if (s.backend, s.name) == WAKER]
    return not state.maintenance


def _saved(e: edge.Edge) -> bool:
    saved = e.saved()
    assert saved is not None
    return edge.waker_states(saved)[WAKER]


def test_an_apply_asks_for_the_stopped_apps_after_a_concurrent_stop_took_the_lock(
    host_edge: edge.Edge,
) -> None:
    """The interleaving: an apply's route update learns the stopped apps; the app's
    machine autostops and the ticker enables the waker; the apply then writes its
    table. It must not write the waker state from before the stop.

    Asked outside the lock (the bug), the ticker's tick happens before the apply
    writes; asked under it, the tick waits for the lock, so it happens after."""
    machines = Machines()
    handler = edge.RouteHandler(host_edge, machines.stopped_apps)
    ticker = edge.Ticker(handler)
    port = free_port()
    served, scaled = _served(1, port), _served(2, port)
    handler.create("web", served, lambda *_: None)
    assert not _held(host_edge)  # the machine runs

    late: list[str] = []

    def asked_by_the_apply() -> frozenset[str]:
        answer = machines.stopped_apps()
        machines.stopped.add("web")  # autostop stops the machine right after
        if host_edge.busy():
            late.append("the ticker waits for the lock")  # it runs once the apply is done
        else:
            ticker(0.0)  # the lock is free: the ticker runs before the apply takes it
        return answer

    apply = edge.RouteHandler(host_edge, asked_by_the_apply)
    apply.update("web", served, scaled, lambda *_: None)  # the app scales up meanwhile
    for _ in late:
        ticker(1.0)
    assert _held(host_edge) and _saved(host_edge)  # the stopped machine can be woken


def _stopped_and_ticked(host_edge: edge.Edge) -> tuple[Machines, edge.Ticker]:
    """The app served, its machine stopped, and a tick since: the waker is enabled."""
    machines = Machines()
    handler = edge.RouteHandler(host_edge, machines.stopped_apps)
    ticker = edge.Ticker(handler)
    handler.create("web", _served(), lambda *_: None)
    machines.stopped.add("web")
    ticker(0.0)
    assert _held(host_edge) and _saved(host_edge)
    return machines, ticker


def test_the_ticker_corrects_a_table_made_live_with_an_outdated_set(host_edge: edge.Edge) -> None:
    """Whatever another process left live, the next tick brings the waker to the machines."""
    machines, ticker = _stopped_and_ticked(host_edge)
    host_edge.change({}, frozenset, lambda *_: None)  # a writer whose set was outdated
    assert not _held(host_edge) and not _saved(host_edge)
    ticker(1.0)  # the stopped apps are those the ticker saw last time, yet:
    assert _held(host_edge) and _saved(host_edge)

    machines.stopped.clear()  # woken: the waker goes off again
    ticker(2.0)
    assert not _held(host_edge) and not _saved(host_edge)


def test_the_ticker_corrects_a_waker_haproxy_holds_unlike_the_saved_table(
    host_edge: edge.Edge,
) -> None:
    """The saved table is what a refresh diffs against: HAProxy's own state is checked too."""
    _, ticker = _stopped_and_ticked(host_edge)
    with runtime.AdminSession(host_edge.paths.options().admin_socket) as session:
        session.execute(f"disable server {WAKER[0]}/{WAKER[1]}")
    assert not _held(host_edge) and _saved(host_edge)  # the symptom reported once on a lab host
    ticker(1.0)
    assert _held(host_edge) and _saved(host_edge)
    ticker(2.0)  # nothing astray now: a no-op
    assert _held(host_edge)


def test_the_ticker_does_not_wait_for_an_apply_holding_the_lock(host_edge: edge.Edge) -> None:
    """Mid-apply HAProxy may be ahead of the saved table: the supervisor must not stall."""
    machines, ticker = _stopped_and_ticked(host_edge)
    machines.stopped.clear()  # woken: the waker should go off
    with open(host_edge.paths.lock, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # an apply in a drain step
        tick = threading.Thread(target=ticker, args=(1.0,))
        tick.start()
        tick.join(2.0)
        held_up = tick.is_alive()
        fcntl.flock(lock, fcntl.LOCK_UN)
    tick.join()
    assert not held_up
    assert _held(host_edge)  # left for the next tick
    ticker(2.0)
    assert not _held(host_edge) and not _saved(host_edge)


class Waking(Machines):
    """The machines again, with when each app's machine last started (``started_apps``)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: dict[str, float] = {}
        self.down: set[str] = set()

    def started_apps(self) -> dict[str, float]:
        return dict(self.started)

    def start(self, app: str, at: float | None = None) -> None:
        self.stopped.discard(app)
        self.started[app] = time.time() if at is None else at

    def stop(self, app: str, machine: str) -> None:
        self.stopped.add(app)
        self.down.add(machine)

    def stopped_machines(self) -> frozenset[str]:
        return frozenset(self.down)


@pytest.fixture
def woken(tmp_path: Path, backends: Backends) -> Iterator[tuple[edge.Edge, Backends]]:
    """An edge whose waker port has a stand-in waker (an HTTP server answering "waker")."""
    settings = t.Settings(waker_port=backends.start("waker"))
    e = edge.Edge(edge.EdgePaths.of(tmp_path), "sea-1", settings)
    yield e, backends
    e.change({"web": None}, frozenset, lambda *_: None)


def _local_up(e: edge.Edge) -> bool:
    with runtime.AdminSession(e.paths.options().admin_socket) as session:
        states = session.servers_state("be_web_0")
    return any(s.name == "sea.1" and s.op_state == runtime.OP_RUNNING for s in states)


def test_a_woken_machine_keeps_its_waker_until_haproxy_sees_it_up(
    woken: tuple[edge.Edge, Backends],
) -> None:
    """Issue #8's 503: the machine leaves "stopped" (started, booting) while HAProxy still
    holds its server DOWN until a check passes; with the waker off meanwhile, the route
    has no usable server. The waker stays on (ticker and apply alike) until it is UP."""
    host_edge, processes = woken
    machines = Waking()
    handler = edge.RouteHandler(host_edge, machines.stopped_apps, machines.started_apps)
    ticker = edge.Ticker(handler)
    port, machine_port = free_port(), free_port()
    served = spec.to_json(
        "web",
        "sea",
        [route("web", port, (server("sea.1", machine_port), _waker()))],
    )
    handler.create("web", served, lambda *_: None)
    machines.stopped.add("web")
    ticker(0.0)
    assert _held(host_edge) and _saved(host_edge)

    machines.start("web")  # booting: nothing listens on its port yet
    ticker(1.0)
    assert _held(host_edge) and _saved(host_edge)
    handler.start("web", served, lambda *_: None)  # an apply's refresh keeps it on too
    assert _held(host_edge) and _saved(host_edge)
    status, _, body = get(port)
    assert (status, body) == (200, b"waker\n")  # on main: 503, no usable server

    processes.start("sea.1", machine_port)  # the machine listens; HAProxy's next check sees it
    deadline = time.monotonic() + 5.0
    while not _local_up(host_edge) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _local_up(host_edge)
    ticker(2.0)
    assert not _held(host_edge) and not _saved(host_edge)
    assert get(port)[2] == b"sea.1\n"


def test_a_machine_that_never_comes_up_keeps_its_waker_only_for_the_wake_window(
    host_edge: edge.Edge,
) -> None:
    machines = Waking()
    handler = edge.RouteHandler(host_edge, machines.stopped_apps, machines.started_apps)
    ticker = edge.Ticker(handler)
    handler.create("web", _served(), lambda *_: None)
    machines.stopped.add("web")
    ticker(0.0)
    machines.start("web", at=time.time() - edge.WAKE_WINDOW_S + 30)
    ticker(1.0)
    assert _held(host_edge)  # within the window: still waking
    machines.start("web", at=time.time() - edge.WAKE_WINDOW_S - 1)
    ticker(2.0)
    assert not _held(host_edge) and not _saved(host_edge)  # the remote backups serve again


def _waker() -> t.Server:
    return t.Server(t.WAKER_NAME, t.Role.WAKER, "", 0, enabled=False)


def test_a_machine_stopped_by_hand_has_its_server_down_at_the_next_tick(
    woken: tuple[edge.Edge, Backends],
) -> None:
    """The lab's 100-curl wake test still got one 503: requests sent within seconds of a
    stop by hand went to the stopped machine's server, UP until its checks timed out, and
    queued (the waker was already on). The ticker marks the server down itself."""
    host_edge, processes = woken
    machines = Waking()
    handler = edge.RouteHandler(
        host_edge, machines.stopped_apps, machines.started_apps, machines.stopped_machines
    )
    ticker = edge.Ticker(handler)
    port, machine_port = free_port(), free_port()
    served = spec.to_json(
        "web", "sea", [route("web", port, (server("sea.1", machine_port), _waker()))]
    )
    processes.start("sea.1", machine_port)
    handler.create("web", served, lambda *_: None)
    deadline = time.monotonic() + 5.0
    while not _local_up(host_edge) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _local_up(host_edge) and get(port)[2] == b"sea.1\n"

    processes.stop("sea.1")
    machines.stop("web", "web/sea#1")  # its slot, as the saved table names it
    assert _local_up(host_edge)  # HAProxy has not noticed yet
    ticker(1.0)
    assert not _local_up(host_edge) and _held(host_edge)
    assert get(port)[2] == b"waker\n"
