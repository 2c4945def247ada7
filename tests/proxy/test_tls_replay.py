"""TLS termination with the lab CA, force_https, and fly-replay in each form, on real HAProxy."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.proxy import certs, proxy, runtime
from providers.proxy import table as t
from tests.proxy.conftest import Backends, free_port, get, server, table


def test_tls_with_the_lab_ca_and_force_https(edge: proxy.EdgeProxy, backends: Backends) -> None:
    assert edge.options.certs_dir is not None
    p1 = backends.start("tls1")
    plain, secure = free_port(), free_port()
    r = t.Route(
        app="hello",
        service=0,
        mode=t.Mode.HTTP,
        listeners=(
            t.Listener("127.0.0.1", plain, tls=False, http=True, force_https=True),
            t.Listener("127.0.0.1", secure, tls=True, http=True),
        ),
        servers=(server("sea.1", p1),),
        hostnames=("hello.fleet.test",),
    )
    tab = table(r)
    ca = certs.load_or_create_authority(edge.options.state_dir.parent / "ca")
    certs.write_app_certificates(ca, tab, edge.options.certs_dir)
    edge.start(tab)

    status, headers, _ = get(plain, "/x?y=1", host="hello.fleet.test")
    assert status == 301
    assert headers["location"] == "https://hello.fleet.test/x?y=1"

    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", secure)) as raw,
        context.wrap_socket(raw, server_hostname="hello.fleet.test") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: hello.fleet.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
        assert tls.getpeercert() is not None
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"tls1\n")
    # a client without the lab CA refuses the certificate
    with (
        socket.create_connection(("127.0.0.1", secure)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="hello.fleet.test")


@pytest.fixture
def replay_edge(edge: proxy.EdgeProxy, backends: Backends) -> Iterator[int]:
    """One app: sea.1 local, ams.1 and nrt.1 remote; sea.1 is the one first asked."""
    port = free_port()
    servers = (
        server("sea.1", backends.start("sea.1")),
        server("nrt.1", backends.start("nrt.1"), role=t.Role.REMOTE, region="nrt"),
        server("ams.1", backends.start("ams.1"), role=t.Role.REMOTE, region="ams"),
    )
    r = t.Route("app", 0, t.Mode.HTTP, (t.Listener("127.0.0.1", port, False, True),), servers)
    edge.start(table(r))
    yield port


@pytest.mark.parametrize(
    ("header", "answered_by"),
    [("region=ams", "ams.1"), ("instance=nrt.1", "nrt.1"), ("instance=app/ams#1", "ams.1")],
)
def test_replay_to_region_or_instance(replay_edge: int, header: str, answered_by: str) -> None:
    status, headers, body = get(replay_edge, f"/replay?h={header.replace('#', '%23')}")
    assert status == 200
    assert headers["x-server"] == answered_by
    assert "fly-replay" not in headers
    assert headers["x-replay-src"].startswith("instance=sea.1;region=sea;t=")
    assert body.startswith(f"{answered_by} GET 0 ".encode())


def test_replay_elsewhere_goes_to_another_machine_nearest_first(replay_edge: int) -> None:
    status, headers, _ = get(replay_edge, "/replay?h=elsewhere%3Dtrue")
    assert (status, headers["x-server"]) == (200, "nrt.1")


def test_replay_state_is_passed_on(replay_edge: int) -> None:
    _, headers, _ = get(replay_edge, "/replay?h=region%3Dams%3Bstate%3Dabc")
    assert headers["x-replay-src"].endswith(";state=abc")


# header values whose lengths take 1, 2 and 3 bytes in req.hdrs_bin's encoding
@pytest.mark.parametrize(
    ("absolute", "value"), [(False, "t1"), (True, "v" * 300), (False, "w" * 3000)]
)
def test_replay_keeps_path_query_and_headers(replay_edge: int, absolute: bool, value: str) -> None:
    # longer than HAProxy's default 1 KiB kept request line: must not be cut
    target = "/replay?h=region%3Dams&pad=" + "p" * 3000 + "&x=%20y"
    sent = f"http://app.fleet.test:{replay_edge}{target}" if absolute else target
    status, headers, _ = get(replay_edge, sent, headers={"x-test": value})
    assert (status, headers["x-server"]) == (200, "ams.1")
    assert headers["x-target"] == target  # absolute form: scheme and authority left out
    assert headers["x-test"] == value


def test_h2_streams_of_one_connection_replay_their_own_request(
    edge: proxy.EdgeProxy, backends: Backends, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    port = free_port()
    servers = (
        server("sea.1", backends.start("sea.1")),
        server("ams.1", backends.start("ams.1"), role=t.Role.REMOTE, region="ams"),
    )
    listeners = (t.Listener("127.0.0.1", port, tls=True, http=True),)
    tab = table(t.Route("app", 0, t.Mode.HTTP, listeners, servers, ("app.fleet.test",)))
    ca = certs.load_or_create_authority(edge.options.state_dir.parent / "ca")
    certs.write_app_certificates(ca, tab, edge.options.certs_dir)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    edge.start(tab)
    common = ["--cacert", str(tmp_path / "ca.pem"), "--resolve", f"app.fleet.test:{port}:127.0.0.1"]
    common += ["-o", "/dev/null", "-w", "%{http_version} %{num_connects} %header{x-server}"]
    common[-1] += " %header{x-test} %header{x-target}\\n"
    argv = ["curl", "-s", "--http2", "--parallel", "--parallel-max", "20"]
    for i in range(20):
        url = f"https://app.fleet.test:{port}/replay?h=region%3Dams&n={i}"
        argv += [*common, "-H", f"x-test: h{i}", url, "--next"]
    out = subprocess.run(argv[:-1], capture_output=True, text=True, timeout=60, check=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    assert sum(int(r[1]) for r in rows) == 1  # one connection: the 20 were streams of it
    assert sorted((r[0], *r[2:]) for r in rows) == sorted(
        ("2", "ams.1", f"h{i}", f"/replay?h=region%3Dams&n={i}") for i in range(20)
    )


@pytest.mark.parametrize("chunked", [False, True])
def test_replayed_bodies_arrive_whole(replay_edge: int, chunked: bool) -> None:
    body = bytes(range(256)) * 200  # 51,200 bytes, under the 64 KiB cap
    conn = http.client.HTTPConnection("127.0.0.1", replay_edge, timeout=10)
    if chunked:
        conn.request(
            "POST",
            "/replay?h=region%3Dams",
            body=iter([body[:1000], body[1000:]]),
            encode_chunked=True,
        )
    else:
        conn.request("POST", "/replay?h=region%3Dams", body=body)
    res = conn.getresponse()
    answer = res.read()
    conn.close()
    assert res.status == 200
    assert answer.decode().split() == [
        "ams.1",
        "POST",
        str(len(body)),
        hashlib.sha256(body).hexdigest(),
    ]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_replay_body_is_refused_not_truncated(replay_edge: int, chunked: bool) -> None:
    body = b"x" * (200 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", replay_edge, timeout=10)
    if chunked:
        conn.request("POST", "/replay?h=region%3Dams", body=iter([body]), encode_chunked=True)
    else:
        conn.request("POST", "/replay?h=region%3Dams", body=body)
    res = conn.getresponse()
    answer = res.read()
    conn.close()
    assert res.status == 413
    assert "replay limit of 65536 bytes" in (res.getheader("fly-replay-failed") or "")
    assert b"ams.1" not in answer


def test_small_posts_that_are_not_replayed_pass_untouched(replay_edge: int) -> None:
    body = b"y" * (200 * 1024)  # over the replay cap, but no replay asked: served whole
    status, _, answer = get(replay_edge, "/echo", method="POST", body=body)
    assert status == 200 and answer.split()[2] == str(len(body)).encode()


def test_replay_without_a_target_falls_back_with_a_reason(replay_edge: int) -> None:
    status, headers, body = get(replay_edge, "/replay?h=region%3Dsyd")
    assert status == 200 and body == b"original\n"
    assert "fly-replay" not in headers
    assert headers["fly-replay-failed"] == "no target for region=syd"
    _, headers, _ = get(replay_edge, "/replay?h=region%3Dams", method="OPTIONS")
    assert headers["fly-replay-failed"] == "method OPTIONS cannot be replayed"


def test_replay_targets_follow_runtime_changes(
    edge: proxy.EdgeProxy, backends: Backends, replay_edge: int
) -> None:
    assert edge.last_good is not None
    r = edge.last_good.routes[0]
    syd = server("syd.1", backends.start("syd.1"), role=t.Role.REMOTE, region="syd")
    result = edge.apply(table(t.Route(r.app, 0, r.mode, r.listeners, (*r.servers, syd))))
    assert result.method is proxy.Method.RUNTIME
    _, headers, _ = get(replay_edge, "/replay?h=region%3Dsyd")
    assert headers["x-server"] == "syd.1"


def test_an_app_with_replay_off_gets_its_answer_untouched(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    port = free_port()
    servers = (
        server("sea.1", backends.start("sea.1")),
        server("ams.1", backends.start("ams.1"), role=t.Role.REMOTE, region="ams"),
    )
    listeners = (t.Listener("127.0.0.1", port, False, True),)
    edge.start(table(t.Route("app", 0, t.Mode.HTTP, listeners, servers, replay=False)))
    status, headers, body = get(port, "/replay?h=region%3Dams")
    assert (status, body) == (200, b"original\n")
    assert headers["fly-replay"] == "region=ams"  # passed on to the client, not acted on
    assert "fly-replay-failed" not in headers
    big = b"z" * (200 * 1024)  # nothing is held for a replay: any body passes
    assert get(port, "/echo", method="POST", body=big)[2].split()[2] == str(len(big)).encode()


def test_a_replaying_frontend_logs_only_errors_and_only_in_memory(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    # the log is there so that HAProxy keeps each request line for replay.lua;
    # normal traffic leaves no line, an error leaves one in the ring
    up, down = free_port(), free_port()
    ok = t.Route("ok", 0, t.Mode.HTTP, (t.Listener("127.0.0.1", up, False, True),), ())
    ok = dataclasses.replace(ok, servers=(server("sea.1", backends.start("sea.1")),))
    dead = t.Route("dead", 0, t.Mode.HTTP, (t.Listener("127.0.0.1", down, False, True),), ())
    dead = dataclasses.replace(dead, servers=(server("sea.1", free_port()),))  # nothing listens
    edge.start(table(ok, dead))
    assert get(up, "/fine")[0] == 200
    assert get(down, "/broken")[0] == 503
    with runtime.AdminSession(edge.options.admin_socket) as admin:
        events = admin.execute("show events fleet-errors")
    assert '"GET /broken HTTP/1.1"' in events and " 503 " in events
    assert "/fine" not in events
