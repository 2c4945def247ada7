"""Benchmark: the edge proxy's generated HAProxy config vs a hand-written minimal one.

In one run, side by side, interleaved rounds (the machine is shared and noisy):
wrk straight to the backend, through a minimal hand-written HAProxy config,
and through our generated config (100 apps, Host map routing, replay
bookkeeping, buffering) to the same backend. Both proxies run master-worker
with one thread on CPU 0; wrk and the backend run on CPU 1. The backend is HAProxy answering
``http-request return``, so it is never the bottleneck.

Then a one-route change: 20 trials of moving app ``web`` from one backend to
another through the runtime API, timed until requests are answered by the new
backend, asserting that only ``web``'s backend was touched.
Goals (issue 8): generated >= 0.95x minimal rps; route change p99 <= 1 s.
Traffic stays on 127.0.0.1; every run is bounded by wrk's duration.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from providers.proxy import haproxy, proxy
from providers.proxy import table as t

BACKEND_CFG = """
global
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend b1
    bind 127.0.0.1:{p1}
    http-request return status 200 content-type text/plain string "b1"
frontend b2
    bind 127.0.0.1:{p2}
    http-request return status 200 content-type text/plain string "b2"
"""

MINIMAL_CFG = """
global
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


def wrk(port: int, seconds: float, connections: int) -> tuple[float, float, int]:
    """rps, p99 ms, errors (non-2xx + socket errors)."""
    out = subprocess.run(
        pinned(
            1,
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--latency",
                "-H",
                "Host: web.fleet.test",
                f"http://127.0.0.1:{port}/",
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert m is not None
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = 0
    if non := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non.group(1))
    if se := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(x) for x in se.groups())
    return rps, p99, errors


def fleet_table(port: int, backend: int, apps: int) -> t.RoutingTable:
    routes = []
    for i in range(apps):
        name = "web" if i == 0 else f"app{i:03d}"
        lst = (t.Listener("127.0.0.1", port, False, True),)
        srv = t.Server("sea.1", t.Role.LOCAL, "127.0.0.1", backend, "sea", f"{name}/sea#1")
        remote = t.Server("ams.1", t.Role.REMOTE, "127.0.0.1", backend, "ams", f"{name}/ams#1")
        routes.append(
            t.Route(
                name, 0, t.Mode.HTTP, lst, (srv, remote), (f"{name}.fleet.test",), hard_limit=None
            )
        )
    return t.RoutingTable("bench-1", "sea", tuple(routes))


def served_by(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web.fleet.test"})
        return conn.getresponse().read()
    finally:
        conn.close()


def route_change_trials(
    edge: proxy.EdgeProxy, table: t.RoutingTable, port: int, b2: int, n: int
) -> list[float]:
    times = []
    current = table
    for i in range(n):
        web = current.routes[0]
        target_port, body = (b2, b"b2") if i % 2 == 0 else (web.servers[0].port, b"b1")
        if i % 2 == 1:
            target_port = table.routes[0].servers[0].port
        moved = t.Route(
            web.app,
            0,
            web.mode,
            web.listeners,
            (
                t.Server("sea.1", t.Role.LOCAL, "127.0.0.1", target_port, "sea", "web/sea#1"),
                web.servers[1],
            ),
            web.hostnames,
        )
        nxt = t.RoutingTable(current.host, current.region, (moved, *current.routes[1:]))
        began = time.perf_counter()
        result = edge.apply(nxt)
        assert result.method is proxy.Method.RUNTIME, result
        assert result.touched == {"be_web_0"}, result.touched
        while served_by(port) != body:
            pass
        times.append(time.perf_counter() - began)
        current = nxt
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--apps", type=int, default=100)
    p.add_argument("--trials", type=int, default=20)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    procs: list[subprocess.Popen[bytes]] = []
    edge: proxy.EdgeProxy | None = None
    try:
        b1, b2, minimal = free_port(), free_port(), free_port()
        (work / "backend.cfg").write_text(BACKEND_CFG.format(p1=b1, p2=b2))
        (work / "minimal.cfg").write_text(MINIMAL_CFG.format(port=minimal, backend=b1))
        procs.append(subprocess.Popen(pinned(1, ["haproxy", "-f", str(work / "backend.cfg")])))
        # both proxies are born on CPU 0 (children inherit our affinity) and run the
        # same way, master-worker, so only their configurations differ
        os.sched_setaffinity(0, {0})
        procs.append(subprocess.Popen(["haproxy", "-W", "-f", str(work / "minimal.cfg")]))
        ours = free_port()
        options = haproxy.Options(state_dir=work / "ours", nbthread=1)
        edge = proxy.EdgeProxy(options)
        table = fleet_table(ours, b1, args.apps)
        edge.start(table)
        assert edge.process.pid is not None
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        time.sleep(0.5)
        assert served_by(ours) == b"b1" and served_by(minimal) == b"b1"

        results: dict[str, list[tuple[float, float, int]]] = {
            "direct": [],
            "minimal": [],
            "ours": [],
        }
        for _ in range(args.rounds):
            for name, port in (("direct", b1), ("minimal", minimal), ("ours", ours)):
                results[name].append(wrk(port, args.seconds, args.connections))
        print(
            f"wrk -t1 -c{args.connections} {args.seconds:g}s x {args.rounds} rounds, "
            "proxies on CPU 0, wrk on CPU 1"
        )
        for name, runs in results.items():
            rps = statistics.median(r[0] for r in runs)
            p99 = statistics.median(r[1] for r in runs)
            errs = sum(r[2] for r in runs)
            print(f"  {name:8s} rps {rps:>9.0f}   p99 {p99:6.2f} ms   errors {errs}")
        ratio = statistics.median(r[0] for r in results["ours"]) / statistics.median(
            r[0] for r in results["minimal"]
        )
        print(f"  generated / minimal rps: {ratio:.3f}  (goal >= 0.95)")

        times = route_change_trials(edge, table, ours, b2, args.trials)
        times.sort()
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        print(
            f"one-route change, {args.trials} trials ({args.apps} apps): "
            f"median {statistics.median(times) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms (goal <= 1000 ms); "
            "only be_web_0 touched"
        )
    finally:
        if edge is not None:
            edge.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
