"""The ``route`` kind drains a server the reconciler marks ``draining``: real HAProxy on loopback.

What a machine replaced in place (same address) relies on: the drain step's
route update answers only once the machine has no request in flight, and while
it is drained its route's traffic goes to the other servers (here the backup,
as for an app with one machine in the region).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent import edge
from providers.proxy import spec
from providers.proxy import table as t
from tests.proxy.conftest import Backends, backends, free_port, get, route, server

__all__ = ["backends"]  # the fixture, shared with tests/proxy

pytestmark = pytest.mark.slow


@pytest.fixture
def host_edge(tmp_path: Path) -> Iterator[edge.Edge]:
    e = edge.Edge(edge.EdgePaths.of(tmp_path), "sea-1")
    yield e
    e.change({"web": None}, frozenset, lambda *_: None)  # the last route: HAProxy stops


# HAProxy outlives the agent process that starts it (its own session; later ones adopt
# it by PID), so the Popen object that started it is dropped while it runs.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_drained_server_finishes_in_flight_and_the_backup_serves(
    host_edge: edge.Edge, backends: Backends
) -> None:
    local, remote = backends.start("old"), backends.start("remote")
    port = free_port()
    servers = (server("sea.1", local), server("ams.1", remote, role=t.Role.REMOTE, region="ams"))
    served = spec.to_json("web", "sea", [route("web", port, servers)])
    events: list[tuple[str, str]] = []
    host_edge.change({"web": served}, frozenset, lambda *e: events.append((e[0], e[1])))
    assert {get(port)[2] for _ in range(5)} == {b"old\n"}  # the backup idles while local is up

    slow: list[tuple[int, bytes]] = []
    request = threading.Thread(target=lambda: slow.append(get(port, "/slow?ms=1500")[::2]))
    request.start()
    time.sleep(0.3)
    began = time.monotonic()
    drained = spec.with_draining(served, ["sea.1"])
    host_edge.change({"web": drained}, frozenset, lambda *e: events.append((e[0], e[1])))
    waited = time.monotonic() - began
    request.join()
    assert slow == [(200, b"old\n")]
    assert waited >= 0.9, waited  # answered once the in-flight request was done, not before
    assert waited < 5.0, waited  # ... and well before kill_timeout
    assert ("drained", "be_web_0/sea.1") in events
    assert {get(port)[2] for _ in range(10)} == {b"remote\n"}

    backends.stop("old")  # what the reconciler does next: the old VM goes
    backends.start("old", local)  # ... and its replacement answers at the same address
    host_edge.change({"web": served}, frozenset, lambda *e: events.append((e[0], e[1])))
    time.sleep(1.5)  # HAProxy's check (downinter 1s, rise 1) sees the new one up
    assert {get(port)[2] for _ in range(5)} == {b"old\n"}


def test_only_servers_drained_anew_are_waited_for() -> None:
    a = t.Server("sea.1", t.Role.LOCAL, "127.0.0.1", 1)
    b = t.Server("sea.2", t.Role.LOCAL, "127.0.0.1", 2, draining=True)
    base = route("web", 80, (a, b))
    live = t.RoutingTable("sea-1", "sea", (base,))
    both = t.RoutingTable(
        "sea-1", "sea", (route("web", 80, (dataclasses.replace(a, draining=True), b)),)
    )
    assert edge.newly_draining(live, both) == {("be_web_0", "sea.1"): 5.0}
    assert edge.newly_draining(both, both) == {}
    assert edge.newly_draining(None, live) == {("be_web_0", "sea.2"): 5.0}


def test_the_waker_stays_off_while_its_route_drains_a_machine() -> None:
    waker = t.Server(t.WAKER_NAME, t.Role.WAKER, "127.0.0.1", 1)
    local = server("sea.1", 8080)
    remote = server("ams.1", 8080, role=t.Role.REMOTE, region="ams")
    serving = t.RoutingTable("sea-1", "sea", (route("web", 80, (local, waker, remote)),))
    on = spec.assign_wakers(serving, frozenset({"web"}))
    assert on.routes[0].server(t.WAKER_NAME).enabled  # type: ignore[union-attr]
    # the old VM of sea.1 stopped for its in-place replacement: the backup serves, no wake
    drained = t.RoutingTable(
        "sea-1",
        "sea",
        (route("web", 80, (dataclasses.replace(local, draining=True), waker, remote)),),
    )
    off = spec.assign_wakers(drained, frozenset({"web"}))
    assert not off.routes[0].server(t.WAKER_NAME).enabled  # type: ignore[union-attr]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_the_next_batch_is_drained_only_once_the_restored_server_is_up(
    host_edge: edge.Edge, backends: Backends
) -> None:
    # Batch 1 drained sea.1 (replaced in place); batch 2 restores it and drains ams.1.
    # If ams.1 went to weight 0 while this HAProxy still held sea.1 DOWN (its new VM
    # answers, but the next check has not run yet), the route would have no server.
    local, remote = free_port(), backends.start("remote")
    port = free_port()
    servers = (server("sea.1", local), server("ams.1", remote, role=t.Role.REMOTE, region="ams"))
    served = spec.to_json("web", "sea", [route("web", port, servers)])
    events: list[tuple[str, str]] = []
    emit = lambda *e: events.append((e[0], e[1]))  # noqa: E731
    host_edge.change({"web": spec.with_draining(served, ["sea.1"])}, frozenset, emit)
    time.sleep(3.0)  # nothing listens at sea.1: two checks fail (inter 2s, fastinter), DOWN
    assert {get(port)[2] for _ in range(3)} == {b"remote\n"}

    late = threading.Timer(1.5, lambda: backends.start("new", local))  # the new VM boots
    late.start()
    try:
        began = time.monotonic()
        host_edge.change({"web": spec.with_draining(served, ["ams.1"])}, frozenset, emit)
        waited = time.monotonic() - began
    finally:
        late.join()
    assert waited >= 1.4, (
        waited
    )  # waited for the restored server's check, not just ams.1's idleness
    assert {get(port)[:3:2] for _ in range(5)} == {(200, b"new\n")}  # served at once, no 503
    assert ("restored", "be_web_0/sea.1") in events


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_restored_server_that_never_comes_up_is_reported_not_waited_on_forever(
    host_edge: edge.Edge, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This edge never sees sea.1's new VM (say the mesh drops its checks): the next batch is
    # drained after the bound anyway, and the step says so instead of passing in silence.
    monkeypatch.setattr(edge, "RESTORE_WAIT_S", 1.0)  # the bound is then the kill_timeout
    local, remote = free_port(), backends.start("remote")
    port = free_port()
    servers = (server("sea.1", local), server("ams.1", remote, role=t.Role.REMOTE, region="ams"))
    served = spec.to_json("web", "sea", [route("web", port, servers)])
    kill_timeout = spec.from_json(served, "web")[0].kill_timeout_s
    events: list[tuple[str, str]] = []
    emit = lambda *e: events.append((e[0], e[1]))  # noqa: E731
    host_edge.change({"web": spec.with_draining(served, ["sea.1"])}, frozenset, emit)
    time.sleep(3.0)  # nothing listens at sea.1: two checks fail, DOWN

    began = time.monotonic()
    host_edge.change({"web": spec.with_draining(served, ["ams.1"])}, frozenset, emit)
    waited = time.monotonic() - began
    assert kill_timeout <= waited < kill_timeout + 3.0, waited
    slow = [m for e, m in events if e == "restore-slow"]
    assert slow == [f"be_web_0/sea.1 not UP on this edge after {kill_timeout:g}s; "
                    "draining be_web_0/ams.1 anyway"]  # fmt: skip
    assert ("drained", "be_web_0/ams.1") in events


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_the_gate_keeps_its_last_answer_while_haproxy_misses_a_question_or_two(
    host_edge: edge.Edge, backends: Backends
) -> None:
    # One unanswered question (a loaded host, a reload) withdrew every app of the host
    # at once; now it takes `fall` in a row. A frozen HAProxy stands for a busy one.
    port = free_port()
    served = spec.to_json(
        "web", "sea", [route("web", port, (server("sea.1", backends.start("a")),))]
    )
    host_edge.change({"web": served}, frozenset, lambda *_: None)
    gate = edge.HAProxyHealth(host_edge, timeout_s=0.3, fall=3)
    deadline = time.monotonic() + 10
    while gate.healthy_backends() != {"web": 1} and time.monotonic() < deadline:
        time.sleep(0.1)  # its first check
    assert gate.proxy_healthy() and gate.healthy_backends() == {"web": 1}
    with host_edge.locked() as proxy:
        group = proxy.process.pid
    assert group is not None
    os.killpg(group, signal.SIGSTOP)  # master and worker: in their own session
    try:
        _until_stopped(group)
        answers = [(gate.proxy_healthy(), dict(gate.healthy_backends())) for _ in range(3)]
    finally:
        os.killpg(group, signal.SIGCONT)
    # two misses keep the last answer, the third is a proxy that cannot serve
    assert answers == [(True, {"web": 1}), (True, {"web": 1}), (False, {"web": 0})]
    assert gate.proxy_healthy() and gate.healthy_backends() == {"web": 1}  # answering again
    os.killpg(group, signal.SIGKILL)  # gone, not busy: no benefit of the doubt
    time.sleep(0.3)  # (the kernel closes a killed process's sockets as it exits)
    assert not gate.proxy_healthy() and gate.healthy_backends() == {"web": 0}


def _until_stopped(group: int, timeout: float = 5.0) -> None:
    """Until every process of ``group`` is stopped (a signal is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group:
                states.append(fields[0])
        if states and all(s == "T" for s in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process group {group} not stopped within {timeout} s")
