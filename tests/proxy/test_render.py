"""The rendered configuration keeps per-request work to what the features need (pure).

Each rule below was measured (callgrind, docs/proxy.md "Throughput"): these
tests stop a later change from quietly putting the cost back on every request.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from providers.proxy import haproxy
from providers.proxy import table as t
from tests.proxy.conftest import route, server, table

# a frontend that replays logs, so that HAProxy keeps each request line (capture.req.uri)
REPLAY_LOG = ["log ring@fleet-errors local0", "option httplog", "option dontlog-normal"]


def render(tab: t.RoutingTable, tmp_path: Path) -> tuple[str, dict[str, str]]:
    options = haproxy.Options(state_dir=tmp_path, certs_dir=tmp_path / "certs")
    files = haproxy.render(tab, options)
    maps = {p.name: text for p, text in files.items() if p.parent == options.maps_dir}
    return files[options.config_path], maps


def section(config: str, header: str) -> list[str]:
    """The directive lines of one ``frontend``/``backend`` section."""
    lines = config.split(f"\n{header}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_no_layer7_retries_that_copy_every_request(tmp_path: Path) -> None:
    config, _ = render(table(route("a", 8080, (server("sea.1", 9001),))), tmp_path)
    # anything but conn-failure makes HAProxy copy each request into a second buffer
    assert all(ln.split()[1:] == ["conn-failure"] for ln in re.findall(r"retry-on.*", config))


def test_an_address_of_one_app_goes_to_it_with_no_lookup(tmp_path: Path) -> None:
    a = route("a", 8080, (server("sea.1", 9001),))
    c = route("c", 8080, (server("sea.1", 9003),), address="127.0.0.3")  # same port only
    config, maps = render(table(a, c), tmp_path)
    assert section(config, "frontend fe_http_8080_a_0") == [
        "mode http",
        "bind 127.0.0.1:8080 transparent",
        *REPLAY_LOG,
        "default_backend be_a_0",
    ]
    assert section(config, "frontend fe_http_8080_c_0")[1:] == [
        "bind 127.0.0.3:8080 transparent",
        *REPLAY_LOG,
        "default_backend be_c_0",
    ]
    assert "use_backend" not in config and maps.keys() == {"replay.map"}


def test_apps_sharing_an_address_route_by_one_map_lookup_owner_default(tmp_path: Path) -> None:
    a = route("a", 8080, (server("sea.1", 9001),))
    b = route("b", 8080, (server("sea.1", 9002),))  # shares a's address: Host decides
    c = route("c", 8080, (server("sea.1", 9003),), address="127.0.0.3")
    config, maps = render(table(a, b, c), tmp_path)
    # only the apps on those addresses: c is not reached through a's address
    assert maps["fe_http_8080_a_0.hosts"] == "a.fleet.test be_a_0\nb.fleet.test be_b_0\n"
    assert maps.keys() == {"fe_http_8080_a_0.hosts", "replay.map"}
    hosts = tmp_path / "maps" / "fe_http_8080_a_0.hosts"
    assert section(config, "frontend fe_http_8080_a_0") == [
        "mode http",
        "bind 127.0.0.1:8080 transparent",
        *REPLAY_LOG,
        f"use_backend %[req.hdr(host),field(1,:),lower,map({hosts},be_a_0)]",
        "default_backend be_a_0",
    ]
    assert section(config, "frontend fe_http_8080_c_0")[2:] == [
        *REPLAY_LOG,
        "default_backend be_c_0",
    ]
    assert "frontend fe_http_8080_b_0" not in config


def test_replay_keeps_one_variable_a_body_only_when_there_is_one(tmp_path: Path) -> None:
    config, _ = render(table(route("a", 8080, (server("sea.1", 9001),))), tmp_path)
    rules = [ln for ln in section(config, "backend be_a_0") if ln.startswith("http-")]
    assert rules == [
        "http-request set-var(txn.rq_hdrs) req.hdrs_bin",
        "http-request set-var(txn.rq_body) req.body if { req.body_size gt 0 }",
        "http-response lua.fly_replay if { res.hdr(fly-replay) -m found }",
    ]
    # the path is the request line the frontend keeps by logging (only errors, in memory),
    # whole: the kept line is as long as a buffer
    assert "ring fleet-errors" in config
    assert f"tune.http.logurilen {haproxy.Options(tmp_path).bufsize}" in config


def test_a_frontend_logs_when_a_route_on_its_addresses_replays(tmp_path: Path) -> None:
    off = dataclasses.replace(route("a", 8080, (server("sea.1", 9001),)), replay=False)
    shared_on = route("b", 8080, (server("sea.1", 9002),))  # on a's address, replays
    config, _ = render(table(off, shared_on), tmp_path)
    assert section(config, "frontend fe_http_8080_a_0")[2:5] == REPLAY_LOG


def test_replay_off_leaves_requests_alone(tmp_path: Path) -> None:
    on = route("a", 8080, (server("sea.1", 9001),))
    off = dataclasses.replace(route("b", 8081, (server("sea.1", 9002),)), replay=False)
    config, maps = render(table(on, off), tmp_path)
    assert section(config, "backend be_b_0") == [
        "mode http",
        "balance leastconn",
        "server sea.1 127.0.0.1:9002 weight 100 check inter 2s fastinter 500ms downinter 1s"
        " fall 2 rise 1",
    ]
    assert "be_b_0" not in maps["replay.map"]
    assert not set(REPLAY_LOG) & set(section(config, "frontend fe_http_8081_b_0"))
    alone, _ = render(table(off), tmp_path)
    assert "lua-load" not in alone
    assert "log ring@" not in alone and "ring " not in alone and "logurilen" not in alone
