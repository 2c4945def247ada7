"""soft_limit spill: pure numbering and rendering, then real HAProxy on loopback.

The HAProxy tests use slow requests held open at once, so "where did the
n-th concurrent request go" is observable: below soft_limit all stay local,
above it the extra go to the remote machine, above every machine's limit
they queue then get 503; a route update through the runtime API keeps the
spill backend in step (new remote machine, drained local one).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from providers.proxy import diff, haproxy, proxy, spec, spill
from providers.proxy import table as t
from tests.proxy.conftest import Backends, free_port, get, route, server, table

R = t.Role.REMOTE


def web(port: int, *servers: t.Server, soft: int = 2, hard: int | None = 3) -> t.Route:
    r = route("web", port, servers, hard_limit=hard)
    return dataclasses.replace(r, soft_limit=soft)


def remote(name: str, port: int, **kw: object) -> t.Server:
    return server(name, port, role=R, region=name.split(".", maxsplit=1)[0], **kw)


# pure ----------------------------------------------------------------------------------


def test_a_single_region_route_has_no_spill_and_keeps_hard_limit(tmp_path: Path) -> None:
    alone = web(80, server("sea.1", 9001, maxconn=3), server("sea.2", 9002, maxconn=3))
    assert not spill.active(alone)
    assert spill.spill_servers(alone) == ()
    assert [s.maxconn for s in spill.main_servers(alone)] == [3, 3]
    options = haproxy.Options(state_dir=tmp_path, certs_dir=tmp_path / "certs")
    config = haproxy.render(table(alone), options)[options.config_path]
    # nothing per request for an app in one region: no fetch, no second backend
    assert "be_conn_free" not in config and "_spill" not in config


def test_a_route_with_remote_machines_spills_first_to_them_then_to_local_room(
    tmp_path: Path,
) -> None:
    r = web(80, server("sea.1", 9001, maxconn=3), remote("ams.1", 9101, maxconn=3))
    live = spill.number_table(table(r))
    options = haproxy.Options(state_dir=tmp_path, certs_dir=tmp_path / "certs")
    config = haproxy.render(live, options)[options.config_path]
    assert "use_backend be_web_0_spill if { be_conn_free(be_web_0) eq 0 }" in config
    assert "server sea.1 127.0.0.1:9001 maxconn 2 weight 100" in config  # soft_limit in be_X
    spill_section = config.split("backend be_web_0_spill\n", 1)[1]
    assert "balance first" in spill_section
    # remote first at hard_limit, local after at hard_limit - soft_limit
    assert spill_section.index("server ams.1 127.0.0.1:9101 id 1 maxconn 3") < spill_section.index(
        f"server sea.1 127.0.0.1:9001 id {spill.LOCAL_IDS + 1} maxconn 1"
    )


def test_soft_equal_to_hard_leaves_local_machines_out_of_the_spill_backend() -> None:
    r = web(80, server("sea.1", 9001, maxconn=3), remote("ams.1", 9101, maxconn=3), soft=3)
    assert [s.name for s in spill.spill_servers(spill.number(r))] == ["ams.1"]


def test_newcomers_go_after_their_kind_and_ids_are_never_reused() -> None:
    before = spill.number(
        web(80, server("sea.1", 1), server("sea.2", 2), remote("ams.1", 3), remote("fra.1", 4))
    )
    assert spill.ids(before) == {
        "sea.1": spill.LOCAL_IDS + 1,
        "sea.2": spill.LOCAL_IDS + 2,
        "ams.1": 1,
        "fra.1": 2,
    }
    # ams.1 and sea.1 leave, fra.2 and sea.3 join: HAProxy would give them the freed ids
    after = spill.number(
        web(80, server("sea.2", 2), server("sea.3", 5), remote("fra.1", 4), remote("fra.2", 6)),
        spill.ids(before),
    )
    assert spill.ids(after) == {
        "sea.2": spill.LOCAL_IDS + 2,
        "sea.3": spill.LOCAL_IDS + 3,
        "fra.1": 2,
        "fra.2": 3,
    }
    order = [s.name for s in spill.spill_servers(after)]
    assert order == ["fra.1", "fra.2", "sea.2", "sea.3"]


def test_the_first_remote_machine_turns_spill_on_by_a_reload() -> None:
    one = spill.number_table(table(web(80, server("sea.1", 1))))
    two = table(web(80, server("sea.1", 1), remote("ams.1", 2)))
    p = diff.plan(one, two)
    assert p.reload is not None and "spill on or off: be_web_0" in p.reload
    assert spill.ids(p.live.routes[0]) == {"ams.1": 1, "sea.1": spill.LOCAL_IDS + 1}


def test_the_saved_table_keeps_spill_ids_for_the_next_process() -> None:
    live = spill.number_table(table(web(80, server("sea.1", 1), remote("ams.1", 2))))
    back = spec.table_from_json(spec.table_to_json(live))
    assert spill.ids(back.routes[0]) == spill.ids(live.routes[0])
    # the route spec the reconciler sends carries no ids: they are the host's business
    assert "spill_id" not in str(spec.to_json("web", "sea", live.routes))


# real HAProxy --------------------------------------------------------------------------


def concurrent(port: int, n: int, ms: int = 2500) -> list[tuple[int, str, float]]:
    """``n`` slow requests opened 80 ms apart: (status, answering backend, seconds)."""

    def one() -> tuple[int, str, float]:
        began = time.monotonic()
        status, _, body = get(port, f"/slow?ms={ms}")
        return status, body.decode().strip() if status == 200 else "", time.monotonic() - began

    with ThreadPoolExecutor(n) as pool:
        futures = []
        for _ in range(n):
            futures.append(pool.submit(one))
            time.sleep(0.08)
        return [f.result() for f in futures]


def test_soft_limit_spills_to_the_remote_machine_then_queues_then_503(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    local, far = backends.start("local"), backends.start("remote")
    port = free_port()
    # soft 2, hard 3: local 2 in be_X, remote 3 then local 1 more in the spill backend
    edge.start(table(web(port, server("sea.1", local, maxconn=3), remote("ams.1", far, maxconn=3))))
    assert {get(port)[2] for _ in range(8)} == {b"local\n"}  # idle: never the remote one
    assert [b for _, b, _ in concurrent(port, 2)] == ["local", "local"]  # up to soft_limit
    got = concurrent(port, 7)
    assert [b for _, b, _ in got[:6]] == ["local", "local", "remote", "remote", "remote", "local"]
    status, _, waited = got[6]  # every slot taken: queued, then the queue timeout (1 s)
    assert status == 503 and 0.9 <= waited < 2.0


def test_a_route_update_keeps_the_spill_backend_in_step_without_a_reload(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    ports = {n: backends.start(n) for n in ("local1", "local2", "ams", "fra")}
    port = free_port()
    sea1, sea2 = (
        server("sea.1", ports["local1"], maxconn=3),
        server("sea.2", ports["local2"], maxconn=3),
    )
    ams1, fra1 = remote("ams.1", ports["ams"], maxconn=3), remote("fra.1", ports["fra"], maxconn=3)
    edge.start(table(web(port, sea1, ams1, fra1)))
    # the nearest remote machine leaves, then a local one joins: both at runtime. HAProxy
    # would give the newcomer ams.1's freed id 1, ahead of fra.1 (balance first goes by id)
    for servers in ((sea1, fra1), (sea1, sea2, fra1)):
        result = edge.apply(table(web(port, *servers)))
        assert result.method is proxy.Method.RUNTIME
        assert result.touched == {"be_web_0", "be_web_0_spill"}
    spilled = {s.name for s in edge.session.servers_state("be_web_0_spill")}
    assert spilled == {"sea.1", "sea.2", "fra.1"}
    time.sleep(1.5)  # sea.2's first health checks
    got = sorted(b for _, b, _ in concurrent(port, 5))
    # soft_limit 2 on each local machine, then the remote one before any local room
    assert got == ["fra", "local1", "local1", "local2", "local2"]
    # draining a local machine drains it in both backends
    drained = dataclasses.replace(sea1, draining=True)
    assert edge.apply(table(web(port, drained, sea2, fra1))).method is proxy.Method.RUNTIME
    for backend in ("be_web_0", "be_web_0_spill"):
        weights = {s.name: s.weight for s in edge.session.servers_state(backend)}
        assert weights["sea.1"] == 0
    assert "local1" not in {b for _, b, _ in concurrent(port, 6)}


def test_a_dead_machine_in_the_spill_backend_is_out_after_one_failed_connection(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    """Spill copies are checked every 10 s; a refused connection takes one down at once."""
    ports = {n: backends.start(n) for n in ("local", "ams", "fra")}
    port = free_port()
    ams1, fra1 = remote("ams.1", ports["ams"]), remote("fra.1", ports["fra"])
    edge.start(table(web(port, server("sea.1", ports["local"]), ams1, fra1, soft=1, hard=None)))
    spill_lines = [ln for ln in edge.options.config_path.read_text().splitlines() if " id " in ln]
    assert spill_lines and all(diff.SPILL_CHECK in ln for ln in spill_lines)
    time.sleep(0.5)  # the first checks: every server up
    backends.stop("ams")  # the nearest remote machine dies between two of its spill checks
    began = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(get, port, "/slow?ms=1500")  # sea.1 at soft_limit: the next spills
        time.sleep(0.2)
        status, _, body = get(port)  # ams.1 first (balance first): refused, on to fra.1
        assert busy.result()[0] == 200
    assert (status, body) == (200, b"fra\n")
    state = {s.name: s.op_state for s in edge.session.servers_state("be_web_0_spill")}
    assert state["ams.1"] == 0 and state["fra.1"] == 2, state
    assert time.monotonic() - began < 5  # not a 10 s check: the failed connection did it


def test_a_spilled_request_replays_with_its_routes_targets(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    local, far = backends.start("sea.1"), backends.start("ams.1")
    port = free_port()
    edge.start(table(web(port, server("sea.1", local), remote("ams.1", far), soft=1, hard=2)))
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(get, port, "/slow?ms=1500")  # sea.1 at soft_limit: the next spills
        time.sleep(0.2)
        status, headers, body = get(port, "/replay?h=instance%3Dsea.1")
        assert busy.result()[0] == 200
    # ams.1 answered from be_web_0_spill; replay.lua found be_web_0's targets
    assert status == 200 and headers["x-server"] == "sea.1"
    assert headers["x-replay-src"].startswith("instance=ams.1;region=ams;t=")
    assert body.startswith(b"sea.1 GET 0 ")


def test_a_table_saved_before_spill_makes_the_next_update_a_reload(
    edge: proxy.EdgeProxy, backends: Backends
) -> None:
    local, far = backends.start("local"), backends.start("remote")
    port = free_port()
    tab = table(web(port, server("sea.1", local), remote("ams.1", far)))
    edge.start(tab)
    later = proxy.EdgeProxy(edge.options)  # the next agent process, resuming
    try:
        assert later.resume(tab)  # no spill ids: the HAProxy it adopts may have no spill backend
        assert later.apply(tab).method is proxy.Method.RELOAD
        assert later.live is not None and spill.ids(later.live.routes[0])
    finally:
        later.session.close()
