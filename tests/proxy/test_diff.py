"""Table diffs: only what changed becomes runtime ops; what cannot be, a reload (pure)."""

from __future__ import annotations

import dataclasses

from providers.proxy import diff, spill
from providers.proxy import table as t

L, R, W = t.Role.LOCAL, t.Role.REMOTE, t.Role.WAKER


def srv(name: str, role: t.Role = L, port: int = 8080, **kw: object) -> t.Server:
    region = name.split(".", maxsplit=1)[0]
    return t.Server(name, role, "fd00::1" if role is R else "192.0.2.51", port, region=region, **kw)  # type: ignore[arg-type]


def rt(app: str, *servers: t.Server) -> t.Route:
    lst = (t.Listener("198.51.100.1", 80, False, True),)
    return t.Route(app, 0, t.Mode.HTTP, lst, servers, (f"{app}.example",))


def tab(*routes: t.Route) -> t.RoutingTable:
    return t.RoutingTable("sea-1", "sea", routes)


# as HAProxy holds it: both routes have a remote machine, so each also has a spill backend
BASE = spill.number_table(
    tab(
        rt("a", srv("sea.1"), srv("sea.2"), srv("ams.1", R)),
        rt("b", srv("sea.1"), srv("ams.1", R)),
    )
)


def commands(p: diff.Plan) -> list[str]:
    out: list[str] = []
    for op in p.ops:
        out.extend(op.commands("/m") if isinstance(op, diff.MapOp) else op.commands())
    return out


def test_same_table_is_no_op() -> None:
    p = diff.plan(BASE, BASE)
    assert p.reload is None and p.ops == () and p.live == BASE


def test_first_table_needs_a_reload() -> None:
    assert diff.plan(None, BASE).reload == "initial configuration"


def test_a_new_machine_is_one_add_on_its_backend_only() -> None:
    new = tab(rt("a", srv("sea.1"), srv("sea.2"), srv("sea.3"), srv("ams.1", R)), BASE.routes[1])
    p = diff.plan(BASE, new)
    assert p.reload is None
    assert p.touched == {"be_a_0", "be_a_0_spill"}
    cmds = commands(p)
    assert cmds[:6] == [
        # at soft_limit in the route's backend (it spills) ...
        "add server be_a_0/sea.3 192.0.2.51:8080 maxconn 20 weight 100"
        " check inter 2s fastinter 500ms downinter 1s fall 2 rise 1",
        "enable health be_a_0/sea.3",
        "enable server be_a_0/sea.3",
        # ... and after the other local machines in its spill backend (no hard_limit: no maxconn)
        f"add server be_a_0_spill/sea.3 192.0.2.51:8080 id {spill.LOCAL_IDS + 3} weight 100"
        # checked less often there, and taken down by the first failed connection
        " check inter 10s fastinter 500ms downinter 1s fall 2 rise 1"
        " observe layer4 error-limit 1 on-error mark-down",
        "enable health be_a_0_spill/sea.3",
        "enable server be_a_0_spill/sea.3",
    ]
    assert all("be_b_0" not in c for c in cmds)
    # the replay map learns the new instance and its region
    assert "add map /m be_a_0/instance/sea.3 sea.3|192.0.2.51|8080" in cmds


def test_drain_then_remove() -> None:
    draining = tab(
        rt("a", srv("sea.1"), srv("sea.2", draining=True), srv("ams.1", R)), BASE.routes[1]
    )
    p = diff.plan(BASE, draining)
    assert [c for c in commands(p) if "server" in c or "weight" in c] == [
        "set weight be_a_0/sea.2 0",
        "set weight be_a_0_spill/sea.2 0",
    ]
    gone = tab(rt("a", srv("sea.1"), srv("ams.1", R)), BASE.routes[1])
    p2 = diff.plan(p.live, gone)
    assert commands(p2)[-4:] == [
        "disable server be_a_0/sea.2",
        "del server be_a_0/sea.2",
        "disable server be_a_0_spill/sea.2",
        "del server be_a_0_spill/sea.2",
    ]


def test_removals_come_after_additions_so_capacity_never_dips() -> None:
    swap = tab(rt("a", srv("sea.2"), srv("sea.3"), srv("ams.1", R)), BASE.routes[1])
    ops = [op for op in diff.plan(BASE, swap).ops if isinstance(op, diff.ServerOp)]
    # in both backends: the route's and its spill backend
    assert [(op.before is None, op.after is None) for op in ops] == [(True, False)] * 2 + [
        (False, True)
    ] * 2


def test_remote_ipv6_addresses_are_bracketed() -> None:
    new = tab(BASE.routes[0], rt("b", srv("sea.1"), srv("ams.1", R), srv("ams.2", R)))
    assert f"add server be_b_0/ams.2 [fd00::1]:8080 backup weight 100 {diff.CHECK}" in commands(
        diff.plan(BASE, new)
    )


def test_limit_address_and_waker_changes_are_runtime_updates() -> None:
    a = tab(
        rt("a", srv("sea.1", maxconn=10), t.Server("waker", W, "127.0.0.1", 20000, enabled=False))
    )
    b = tab(
        rt(
            "a",
            srv("sea.1", maxconn=5, port=9090),
            t.Server("waker", W, "127.0.0.1", 20000, enabled=True),
        )
    )
    assert [c for c in commands(diff.plan(a, b)) if "map" not in c] == [
        "set server be_a_0/sea.1 addr 192.0.2.51 port 9090",
        "set maxconn server be_a_0/sea.1 5",
        "enable server be_a_0/waker",
    ]


def test_route_or_listener_changes_need_a_reload() -> None:
    added = tab(*BASE.routes, rt("c", srv("sea.1")))
    assert diff.plan(BASE, added).reload == "routes added: be_c_0"
    moved = dataclasses.replace(
        BASE.routes[1], listeners=(t.Listener("198.51.100.2", 80, False, True),)
    )
    assert diff.plan(BASE, tab(BASE.routes[0], moved)).reload == "routes changed: be_b_0"


def test_a_backup_that_must_come_first_needs_a_reload() -> None:
    # ams is already a backup; a nearer nrt machine would be appended after it
    new = tab(rt("a", srv("sea.1"), srv("sea.2"), srv("nrt.1", R), srv("ams.1", R)), BASE.routes[1])
    assert diff.plan(BASE, new).reload == "be_a_0: backup order changed"
    # appended after the existing backups, it is in the right place: runtime
    later = tab(
        rt("a", srv("sea.1"), srv("sea.2"), srv("ams.1", R), srv("nrt.1", R)), BASE.routes[1]
    )
    assert diff.plan(BASE, later).reload is None


def test_live_order_tracks_what_haproxy_holds() -> None:
    new = tab(rt("a", srv("sea.3"), srv("sea.1"), srv("ams.1", R)), BASE.routes[1])
    live = diff.plan(BASE, new).live
    assert [s.name for s in live.routes[0].servers] == ["sea.1", "ams.1", "sea.3"]


def test_every_op_inverts() -> None:
    new = tab(rt("a", srv("sea.1", maxconn=3), srv("sea.4"), srv("ams.1", R)), BASE.routes[1])
    for op in diff.plan(BASE, new).ops:
        assert op.inverse().inverse() == op
        assert op.inverse().before == op.after


def test_a_hard_limit_change_is_runtime_maxconn_not_a_reload() -> None:
    old = tab(dataclasses.replace(rt("a", srv("sea.1", maxconn=25)), hard_limit=25))
    new = tab(dataclasses.replace(rt("a", srv("sea.1", maxconn=26)), hard_limit=26))
    p = diff.plan(old, new)
    assert p.reload is None
    assert commands(p) == ["set maxconn server be_a_0/sea.1 26"]
