"""WireGuard as data: peer sets, the dump parser (on real recorded output), the diff rules."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from fleet.errors import ProviderError
from providers.network import wireguard
from providers.network.wireguard import ObservedPeer, OpKind, Peer
from tests.network import fleets

RECORDED = Path(__file__).with_name("recorded")
PRIVATE_IN_RECORDING = "QMWhYpQH5tC5jpJOinSfbwU9y3tor30ijrTwYjt1dGA="


# ------------------------------------------------------------------ peer sets


def test_each_host_gets_one_peer_per_other_host_with_its_64() -> None:
    world = fleets.world(4)
    keys = fleets.keys_of(world)
    sets = wireguard.peer_sets(world, keys)
    assert set(sets) == {"h1", "h2", "h3", "h4"}
    for name, peer_set in sets.items():
        assert peer_set.hosts() == {"h1", "h2", "h3", "h4"} - {name}
        assert keys[name] not in peer_set.peers
        for key, peer in peer_set.peers.items():
            assert key == keys[peer.host]
            assert peer.allowed_ips == (str(world.host_prefixes[peer.host]),)
            assert peer.endpoint == f"{world.fleet.hosts[peer.host].ssh.address}:51820"
            assert peer.keepalive == wireguard.DEFAULT_KEEPALIVE


def test_explicit_endpoint_wins_and_ipv6_endpoints_get_brackets() -> None:
    world = fleets.world(2)
    hosts = dict(world.fleet.hosts)
    hosts["h1"] = dataclasses.replace(hosts["h1"], wireguard_endpoint="wg.example.net:4500")
    hosts["h2"] = dataclasses.replace(
        hosts["h2"], ssh=dataclasses.replace(hosts["h2"].ssh, address="2001:db8::2")
    )
    fleet = dataclasses.replace(world.fleet, hosts=hosts)
    assert wireguard.endpoint_of(fleet.hosts["h1"], fleet.network) == "wg.example.net:4500"
    assert wireguard.endpoint_of(fleet.hosts["h2"], fleet.network) == "[2001:db8::2]:51820"


def test_a_host_without_a_key_is_nobodys_peer_yet() -> None:
    world = fleets.world(3)
    keys = fleets.keys_of(world)
    del keys["h3"]
    sets = wireguard.peer_sets(world, keys)
    assert sets["h1"].hosts() == {"h2"}
    assert sets["h3"].hosts() == {"h1", "h2"}


def test_two_hosts_with_one_key_is_an_error() -> None:
    world = fleets.world(2)
    with pytest.raises(ProviderError, match="same WireGuard public key"):
        wireguard.peer_sets(world, {"h1": fleets.fake_key("x"), "h2": fleets.fake_key("x")})


def test_adding_a_host_adds_exactly_one_peer_everywhere() -> None:
    before = fleets.world(3)
    after = fleets.world(4)
    old = wireguard.peer_sets(before, fleets.keys_of(before))
    new = wireguard.peer_sets(after, fleets.keys_of(after))
    for name in old:
        observed = as_observed(old[name])
        ops = wireguard.peer_ops(new[name].peers, observed, old[name].peers)
        assert [(op.kind, op.host) for op in ops] == [(OpKind.ADD, "h4")]


# ------------------------------------------------------------------ parser


def test_parse_recorded_dump_with_peers() -> None:
    text = (RECORDED / "wg-dump-peers.txt").read_text()
    observed = wireguard.parse_dump(text, "wg-a")
    assert observed.public_key == "jB7CDwPAoGGALeUrVyI1MI1n3pYqvPn8LJ1SleiJsm8="
    assert observed.listen_port == 51820
    assert observed.fwmark == 0
    live = observed.peers["XmGHJmsdpCEsUaPYx7BJrvOAXWfR7CuBTtKaVcdM+jA="]
    assert live.endpoint == "192.0.2.2:51820"
    assert live.allowed_ips == ("fdf1:ee70:0:b::/64",)
    assert live.keepalive == 25
    assert live.latest_handshake > 0 and live.rx_bytes > 0 and live.tx_bytes > 0
    idle = observed.peers["h2fajOknpKcyD0IVYQsevYxDKxS0djQouCPC52DG/k8="]
    assert (idle.endpoint, idle.allowed_ips, idle.keepalive, idle.latest_handshake) == (
        None,
        (),
        0,
        0,
    )


def test_parser_never_keeps_the_private_key() -> None:
    for name in ("wg-dump-empty.txt", "wg-dump-peers.txt", "wg-dump-roamed.txt"):
        text = (RECORDED / name).read_text()
        assert PRIVATE_IN_RECORDING in text  # the recording really has it ...
        observed = wireguard.parse_dump(text, "wg-a")
        assert PRIVATE_IN_RECORDING not in repr(observed)  # ... the parsed value does not


def test_parse_empty_interface_and_roamed_ipv6_endpoint() -> None:
    empty = wireguard.parse_dump((RECORDED / "wg-dump-empty.txt").read_text(), "wg-a")
    assert dict(empty.peers) == {}
    roamed = wireguard.parse_dump((RECORDED / "wg-dump-roamed.txt").read_text(), "wg-a")
    peer = roamed.peers["XmGHJmsdpCEsUaPYx7BJrvOAXWfR7CuBTtKaVcdM+jA="]
    assert peer.endpoint == "[2001:db8:ff::2]:51820"


@pytest.mark.parametrize(
    "text",
    ["", "a\tb\tc\n", "k\tp\t51820\toff\nonly\tthree\tfields\n"],
)
def test_parser_rejects_garbage(text: str) -> None:
    with pytest.raises(ProviderError):
        wireguard.parse_dump(text, "wg-a")


# ------------------------------------------------------------------ diff


def as_observed(peer_set: wireguard.PeerSet) -> dict[str, ObservedPeer]:
    return {
        key: ObservedPeer(key, p.endpoint, p.allowed_ips, 0, 0, 0, p.keepalive)
        for key, p in peer_set.peers.items()
    }


def peer(host: str = "h2", endpoint: str | None = "192.0.2.2:51820", **kw: object) -> Peer:
    fields: dict[str, object] = {
        "host": host,
        "public_key": fleets.fake_key(host),
        "endpoint": endpoint,
        "allowed_ips": ("fdf1:ee70:0:2::/64",),
        "keepalive": 25,
    }
    fields.update(kw)
    return Peer(**fields)  # type: ignore[arg-type]


def seen(p: Peer, **kw: object) -> ObservedPeer:
    base = ObservedPeer(p.public_key, p.endpoint, p.allowed_ips, 1, 1, 1, p.keepalive)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_in_sync_means_no_ops() -> None:
    p = peer()
    assert wireguard.peer_ops({p.public_key: p}, {p.public_key: seen(p)}, {p.public_key: p}) == ()


def test_new_peer_is_one_add_with_everything() -> None:
    p = peer()
    (op,) = wireguard.peer_ops({p.public_key: p}, {})
    assert op.kind is OpKind.ADD
    assert op.wg_args() == (
        "peer",
        p.public_key,
        "endpoint",
        "192.0.2.2:51820",
        "allowed-ips",
        "fdf1:ee70:0:2::/64",
        "persistent-keepalive",
        "25",
    )


def test_unknown_peer_is_removed_after_adds() -> None:
    p = peer()
    stranger = peer("gone")
    ops = wireguard.peer_ops({p.public_key: p}, {stranger.public_key: seen(stranger)})
    assert [op.kind for op in ops] == [OpKind.ADD, OpKind.REMOVE]
    assert ops[1].wg_args() == ("peer", stranger.public_key, "remove")


def test_roamed_endpoint_is_not_overwritten() -> None:
    p = peer()
    roamed = seen(p, endpoint="[2001:db8:ff::2]:51820")
    assert wireguard.peer_ops({p.public_key: p}, {p.public_key: roamed}, {p.public_key: p}) == ()
    # Without a last-applied record we cannot tell a roam from a change: keep it.
    assert wireguard.peer_ops({p.public_key: p}, {p.public_key: roamed}, None) == ()


def test_endpoint_changed_in_the_fleet_is_written_even_over_a_roam() -> None:
    before = peer()
    after = peer(endpoint="192.0.2.99:51820")
    roamed = seen(before, endpoint="[2001:db8:ff::2]:51820")
    (op,) = wireguard.peer_ops(
        {after.public_key: after}, {after.public_key: roamed}, {before.public_key: before}
    )
    assert op.kind is OpKind.UPDATE
    assert op.wg_args() == ("peer", after.public_key, "endpoint", "192.0.2.99:51820")


def test_missing_endpoint_is_filled_in() -> None:
    p = peer()
    (op,) = wireguard.peer_ops(
        {p.public_key: p}, {p.public_key: seen(p, endpoint=None)}, {p.public_key: p}
    )
    assert op.endpoint == "192.0.2.2:51820" and op.allowed_ips is None and op.keepalive is None


def test_only_changed_fields_are_written() -> None:
    p = peer()
    drifted = seen(p, allowed_ips=("fdf1:ee70:0:9::/64",), keepalive=0)
    (op,) = wireguard.peer_ops({p.public_key: p}, {p.public_key: drifted}, {p.public_key: p})
    assert op.wg_args() == (
        "peer",
        p.public_key,
        "allowed-ips",
        "fdf1:ee70:0:2::/64",
        "persistent-keepalive",
        "25",
    )
    off = dataclasses.replace(p, keepalive=0)
    (op,) = wireguard.peer_ops({p.public_key: off}, {p.public_key: seen(p)}, {p.public_key: p})
    assert op.wg_args()[-2:] == ("persistent-keepalive", "off")


def test_canonical_ips_sort_and_normalise() -> None:
    assert wireguard.canonical_ips(
        ["fdf1:ee70:0:2:0::/64", "192.0.2.1/32", "fdf1:ee70:0:1::/64"]
    ) == (
        "192.0.2.1/32",
        "fdf1:ee70:0:1::/64",
        "fdf1:ee70:0:2::/64",
    )
    assert wireguard.canonical_ips([ipaddress.ip_network("198.51.100.0/24")]) == (
        "198.51.100.0/24",
    )
