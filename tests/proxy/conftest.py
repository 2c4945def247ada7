"""Proxy test fixtures: real HAProxy on loopback, real backends started and stopped by PID."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from providers.proxy import haproxy, proxy
from providers.proxy import table as t

HTTPD = Path(__file__).with_name("httpd.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backends:
    """Backend processes started by this test; each stopped by its own PID."""

    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, port: int | None = None) -> int:
        port = port or free_port()
        proc = subprocess.Popen(
            [sys.executable, str(HTTPD), str(port), name], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        self.procs[name], self.ports[name] = proc, port
        return port

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.stop_all()


@pytest.fixture
def options(tmp_path: Path) -> haproxy.Options:
    return haproxy.Options(
        state_dir=tmp_path / "proxy",
        certs_dir=tmp_path / "certs",
        hard_stop_after_s=5,
        queue_timeout_s=1.0,
        server_timeout_s=20.0,
        replay_body_cap=64 * 1024,
    )


@pytest.fixture
def edge(options: haproxy.Options) -> Iterator[proxy.EdgeProxy]:
    e = proxy.EdgeProxy(options)
    yield e
    e.stop()


def server(
    name: str, port: int, *, role: t.Role = t.Role.LOCAL, region: str = "sea", **kw: object
) -> t.Server:
    return t.Server(name, role, "127.0.0.1", port, region=region, machine=f"m/{name}", **kw)  # type: ignore[arg-type]


def route(
    app: str,
    port: int,
    servers: tuple[t.Server, ...],
    *,
    mode: t.Mode = t.Mode.HTTP,
    tls: bool = False,
    force_https: bool = False,
    address: str = "127.0.0.1",
    hard_limit: int | None = None,
) -> t.Route:
    http = mode is t.Mode.HTTP
    return t.Route(
        app=app,
        service=0,
        mode=mode,
        listeners=(t.Listener(address, port, tls, http, force_https),),
        servers=servers,
        hostnames=(f"{app}.fleet.test",),
        hard_limit=hard_limit,
    )


def table(*routes: t.Route) -> t.RoutingTable:
    return t.RoutingTable("sea-1", "sea", routes)


def get(  # noqa: PLR0917
    port: int,
    path: str = "/",
    host: str = "",
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if host:
            hdrs["Host"] = host
        conn.request(method, path, body=body, headers=hdrs)
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    non_2xx: int
    socket_errors: int
    p99_ms: float


def wrk(url: str, seconds: float, connections: int = 20, threads: int = 2) -> subprocess.Popen[str]:
    """Start a bounded wrk run (it stops by itself after ``seconds``)."""
    return subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_result(proc: subprocess.Popen[str]) -> WrkResult:
    out, _ = proc.communicate(timeout=120)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return WrkResult(
        requests=requests,
        rps=rps,
        non_2xx=int(non.group(1)) if non else 0,
        socket_errors=sum(int(x) for x in errs.groups()) if errs else 0,
        p99_ms=float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
    )
