"""The agent's network kinds: the announcer's decisions per tick, the mesh's view of drift.

BIRD itself is replaced by a recorder here (what would be rendered and
configured); the real daemons run in tests/network and the lab tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hostagent import announcer, bird, mesh
from hostagent.agent import Agent, Facts
from hostagent.inventory import Entry, Inventory
from providers.network import announce, bgp, wgkeys, wireguard

SPEC = {"app": "web", "prefixes": ["198.51.100.10/32", "2001:db8:100::10/128"]}
TIMERS = announce.AnnounceTimers(grace_s=2.0, hold_down_s=3.0)


class Edge:
    def __init__(self) -> None:
        self.proxy = True
        self.backends: dict[str, int] = {"web": 1}

    def proxy_healthy(self) -> bool:
        return self.proxy

    def healthy_backends(self) -> Mapping[str, int]:
        return self.backends


class Recorder(bird.BirdDaemon):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, "h1", bgp.LAB_TIMERS)
        self.live: tuple[bgp.Announcement, ...] = ()
        self.configures = 0

    def sync(
        self,
        spec: Mapping[str, Any] | None = None,
        announcements: Iterable[bgp.Announcement] | None = None,
    ) -> str:
        new = tuple(announcements or ())
        if new == self.live:
            return "unchanged"
        self.live, self.configures = new, self.configures + 1
        return "configured"


def setup(tmp_path: Path) -> tuple[Inventory, Edge, Recorder, announcer.Announcer]:
    inv = Inventory(tmp_path / "inventory")
    with inv.transaction() as state:
        state.put(Entry("announcement", "web", "sha256:1", dict(SPEC)))
    edge, daemon = Edge(), Recorder(tmp_path)
    return inv, edge, daemon, announcer.Announcer(tmp_path, inv, edge, daemon, TIMERS)


def exported(daemon: Recorder) -> set[tuple[str, str]]:
    return {(str(a.prefix), a.export.value) for a in daemon.live}


def test_announced_only_after_the_hold_down_and_withdrawn_at_once(tmp_path: Path) -> None:
    _, edge, daemon, ann = setup(tmp_path)
    ann.tick(100.0)
    ann.tick(102.9)
    assert daemon.live == ()
    ann.tick(103.0)
    assert exported(daemon) == {
        ("198.51.100.10/32", "announce"),
        ("2001:db8:100::10/128", "announce"),
    }
    ann.tick(104.0)
    assert daemon.configures == 1  # unchanged config: no `birdc configure`
    edge.backends = {"web": 0}
    ann.tick(104.5)
    assert daemon.live == ()
    edge.backends = {"web": 1}
    edge.proxy = False  # a healthy machine is not enough without the proxy
    ann.tick(110.0)
    assert daemon.live == ()


def test_planned_withdraw_is_graceful_for_the_grace_period(tmp_path: Path) -> None:
    inv, _, daemon, ann = setup(tmp_path)
    ann.tick(0.0)
    ann.tick(3.0)
    with inv.transaction() as state:
        entry = state.get("announcement", "web")
        assert entry is not None
        entry.status = {"pending": "delete"}
    ann.tick(4.0)
    assert {e for _, e in exported(daemon)} == {"graceful"}
    ann.tick(5.9)
    assert {e for _, e in exported(daemon)} == {"graceful"}
    ann.tick(6.0)
    assert daemon.live == ()
    assert json.loads((tmp_path / "announce.json").read_text())["apps"]["web"]["export"] is None


def test_withdraw_all_in_the_bird_spec_drains_every_announcement_at_once(
    tmp_path: Path,
) -> None:
    inv, edge, daemon, ann = setup(tmp_path)
    other = {"app": "api", "prefixes": ["198.51.100.11/32"]}
    bird_spec = {"router_id": "192.0.2.11", "asn": 65010, "neighbors": [], "pools": []}
    with inv.transaction() as state:
        state.put(Entry("announcement", "api", "sha256:2", other))
        state.put(Entry(bird.KIND, bird.RESOURCE_ID, "sha256:3", dict(bird_spec)))
    edge.backends = {"web": 1, "api": 1}
    ann.tick(0.0)
    ann.tick(3.0)
    assert {e for _, e in exported(daemon)} == {"announce"} and len(daemon.live) == 3
    with inv.transaction() as state:  # the host is cordoned: its BIRD step says so
        state.put(
            Entry(bird.KIND, bird.RESOURCE_ID, "sha256:4", {**bird_spec, "withdraw_all": True})
        )
    ann.tick(4.0)  # both at once, with no announcement's delete pending yet
    assert {e for _, e in exported(daemon)} == {"graceful"} and len(daemon.live) == 3
    ann.tick(6.0)
    assert daemon.live == ()
    with inv.transaction() as state:  # uncordoned before the deletes: announced again
        state.put(Entry(bird.KIND, bird.RESOURCE_ID, "sha256:3", dict(bird_spec)))
    ann.tick(7.0)
    ann.tick(10.0)
    assert {e for _, e in exported(daemon)} == {"announce"} and len(daemon.live) == 3


def test_delete_waits_for_the_ticker_then_leaves(tmp_path: Path) -> None:
    _, _, _, ann = setup(tmp_path)
    (tmp_path / "announce.json").write_text(
        json.dumps({"apps": {"web": {"phase": "graceful", "export": "graceful"}}})
    )
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        now[0] += s
        slept.append(s)
        if now[0] >= 1.0:  # the ticker (another process) withdraws it after a while
            (tmp_path / "announce.json").write_text(json.dumps({"apps": {}}))

    ann.clock, ann.sleep = (lambda: now[0]), sleep
    ann.delete("web", {"app": "web", "prefixes": []}, lambda *_: None)
    assert 1.0 <= now[0] < 1.2


def test_a_restarted_agent_keeps_what_was_announced(tmp_path: Path) -> None:
    _, _, daemon, ann = setup(tmp_path)
    ann.tick(0.0)
    ann.tick(3.0)
    assert daemon.live
    _, _, daemon2, again = setup(tmp_path)
    again.tick(50.0)
    assert daemon2.live == daemon.live  # adopted: no withdraw, no new hold-down


def test_roamed_endpoint_is_not_drift_but_a_missing_peer_is() -> None:
    spec = {
        "interface": "wg-h1",
        "listen_port": 51820,
        "address": "fdf1:ee70:0:1::1",
        "prefix": "fdf1:ee70:0:1::/64",
        "routes": ["fdf1:ee70::/48"],
        "peers": [
            {"host": "h2", "public_key": "K2", "endpoint": "192.0.2.12:51820",
             "allowed_ips": ["fdf1:ee70:0:2::/64"], "keepalive": 25},
        ],
    }  # fmt: skip
    roamed = wireguard.ObservedPeer("K2", "198.18.0.7:40000", ("fdf1:ee70:0:2::/64",), 5, 1, 1, 25)
    live = wireguard.ObservedInterface("wg-h1", "K1", 51820, 0, MappingProxyType({"K2": roamed}))
    assert mesh.actual_of(spec, live, routed=True) == spec
    empty = wireguard.ObservedInterface("wg-h1", "K1", 51820, 0, MappingProxyType({}))
    assert mesh.actual_of(spec, empty, routed=True)["peers"] == []
    assert mesh.actual_of(spec, live, routed=False)["routes"] == []


def test_observe_reports_the_key_in_use_after_a_rotation(tmp_path: Path) -> None:
    wg = mesh.Mesh(tmp_path, "h1")
    facts = Facts("h1", 1, 1024, {}, "qemu", "0", None)
    agent = Agent(
        Inventory(tmp_path / "inventory"),
        {wg.kind: wg},
        facts,
        live_facts=lambda: {"wireguard_public_key": wg.public_key()},
    )
    request = {"protocol_version": 1, "host": "h1"}
    first = agent.observe(request)["facts"]["wireguard_public_key"]
    assert (
        first == wg.public_key()
        and (tmp_path / "wireguard" / "mesh.key").stat().st_mode & 0o077 == 0
    )
    staged = wgkeys.ensure_key(tmp_path / "wireguard", mesh.KEY_NAME, staged=True)
    wgkeys.promote_next(tmp_path / "wireguard", mesh.KEY_NAME)
    # The same agent object (the supervisor's, answering observe) sees the new key.
    assert agent.observe(request)["facts"]["wireguard_public_key"] == staged.value != first
