"""BIRD config rendering: what a host announces, and that nothing outside the pools can be."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest

from fleet import model
from fleet.errors import ProviderError
from providers.network import bgp
from tests.network import bgplab, fleets

UP4 = model.UpstreamPeer(ipaddress.ip_address("203.0.113.1"), 64500, "ams-upstream")
UP6 = model.UpstreamPeer(ipaddress.ip_address("2001:db8:ff::1"), 64500, "ams-upstream-v6")


def world(**anycast: model.AppAddresses) -> model.DesiredWorld:
    regions = {"ams": fleets.region("ams", (UP4, UP6), asn=65010)}
    w = fleets.world(2, regions=regions)
    return dataclasses.replace(w, anycast=MappingProxyType(anycast or dict(bgplab.ANYCAST)))


def render(w: model.DesiredWorld, exports: dict[str, bgp.Export], **kw: object) -> str:
    return bgp.render_bird(bgp.bird_config(w, "h1", exports, **kw))  # type: ignore[arg-type]


def bird_accepts(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    return subprocess.run(
        ["bird", "-p", "-c", str(conf)], capture_output=True, text=True, check=False
    )


def test_config_has_router_id_asn_peers_and_only_healthy_apps() -> None:
    text = render(world(), {"web": bgp.Export.ANNOUNCE})
    assert "router id 192.0.2.1;" in text  # h1: the host's IPv4 SSH address
    assert "local as 65010;" in text  # the Region's ASN
    assert "protocol bgp up_ams_upstream from upstream" in text
    assert "neighbor 203.0.113.1 as 64500;" in text
    assert "neighbor 2001:db8:ff::1 as 64500;" in text
    assert "route 198.51.100.10/32 unreachable;" in text
    assert "route 2001:db8:100::10/128 unreachable;" in text
    assert "198.51.100.11" not in text  # api is not healthy here: not announced


def test_network_asn_is_the_default_and_router_id_can_be_given() -> None:
    w = world()
    region = dataclasses.replace(w.fleet.regions["ams"], asn=None)
    fleet = dataclasses.replace(w.fleet, regions=MappingProxyType({"ams": region}))
    w = dataclasses.replace(w, fleet=fleet)
    text = render(w, {}, router_id=ipaddress.IPv4Address("192.0.2.87"))
    assert "local as 65000;" in text and "router id 192.0.2.87;" in text


def test_export_filter_is_built_from_the_pools() -> None:
    text = render(world(), {"web": bgp.Export.ANNOUNCE})
    assert "define ANYCAST4 = [ 198.51.100.0/24+ ];" in text
    assert "define ANYCAST6 = [ 2001:db8:100::/48+ ];" in text
    assert "if !(net ~ ANYCAST4) then reject;" in text
    assert "if source != RTS_STATIC then reject;" in text
    for n in ("4", "6"):
        assert f"export filter export_anycast{n};" in text
    assert "export all" not in text


def test_a_family_without_a_pool_exports_nothing() -> None:
    w = world()
    network = dataclasses.replace(
        w.fleet.network, anycast_pools=(ipaddress.ip_network("198.51.100.0/24"),)
    )
    w = dataclasses.replace(w, fleet=dataclasses.replace(w.fleet, network=network))
    only4 = {"web": model.AppAddresses(ipaddress.IPv4Address("198.51.100.10"), None)}
    w = dataclasses.replace(w, anycast=MappingProxyType(only4))
    text = render(w, {"web": bgp.Export.ANNOUNCE})
    six = text[text.index("filter export_anycast6") :]
    assert six.split("}", 1)[0].split("{", 1)[1].strip() == "reject;"


@pytest.mark.parametrize(
    "address",
    ["192.0.2.10", "2001:db8:200::1", "203.0.113.77"],
)
def test_an_announcement_outside_the_pools_cannot_be_rendered(address: str) -> None:
    ip = ipaddress.ip_address(address)
    rogue = model.AppAddresses(
        ip if isinstance(ip, ipaddress.IPv4Address) else None,
        ip if isinstance(ip, ipaddress.IPv6Address) else None,
    )
    w = world(web=bgplab.ANYCAST["web"], rogue=rogue)
    with pytest.raises(ProviderError, match="outside the anycast pools"):
        render(w, {"web": bgp.Export.ANNOUNCE, "rogue": bgp.Export.ANNOUNCE})
    # ... and neither can a hand-built config that bypasses bird_config.
    config = bgp.bird_config(w, "h1", {"web": bgp.Export.ANNOUNCE})
    forged = dataclasses.replace(
        config,
        announcements=(*config.announcements, bgp.Announcement(ipaddress.ip_network(ip), "rogue")),
    )
    with pytest.raises(ProviderError, match="outside the anycast pools"):
        bgp.render_bird(forged)


def test_a_pool_that_is_everything_is_refused() -> None:
    config = bgp.bird_config(world(), "h1", {})
    wide = dataclasses.replace(config, pools=(ipaddress.ip_network("0.0.0.0/0"),))
    with pytest.raises(ProviderError, match="whole address space"):
        bgp.render_bird(wide)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"local_asn": 0}, "ASN 0 out of range"),
        ({"timers": bgp.BgpTimers(hold=9, keepalive=9)}, "invalid BGP timers"),
    ],
)
def test_invalid_values_are_refused(change: dict[str, object], message: str) -> None:
    config = dataclasses.replace(bgp.bird_config(world(), "h1", {}), **change)  # type: ignore[arg-type]
    with pytest.raises(ProviderError, match=message):
        bgp.render_bird(config)


def test_names_cannot_inject_config() -> None:
    config = bgp.bird_config(world(), "h1", {"web": bgp.Export.ANNOUNCE})
    evil = dataclasses.replace(
        config,
        announcements=(dataclasses.replace(config.announcements[0], app="x\nprotocol kernel {}"),),
    )
    with pytest.raises(ProviderError, match="cannot appear"):
        bgp.render_bird(evil)
    assert bgp.symbol("ams upstream; export all") == "up_ams_upstream__export_all"


def test_graceful_apps_carry_the_shutdown_community() -> None:
    text = render(world(), {"web": bgp.Export.ANNOUNCE, "api": bgp.Export.GRACEFUL})
    assert "define GRACEFUL4 = [ 198.51.100.11/32 ];" in text
    assert "define GRACEFUL6 = [ 2001:db8:100::11/128 ];" in text
    assert "bgp_community.add((65535, 0));" in text
    plain = render(world(), {"web": bgp.Export.ANNOUNCE})
    assert "GRACEFUL" not in plain and "65535" not in plain


def test_lab_timers_are_rendered() -> None:
    text = render(world(), {}, timers=bgp.LAB_TIMERS)
    for line in ("hold time 9;", "connect delay time 1;", "error wait time 1, 5;"):
        assert line in text


def test_unknown_app_or_host_is_an_error() -> None:
    with pytest.raises(ProviderError, match="no anycast addresses"):
        render(world(), {"nope": bgp.Export.ANNOUNCE})
    with pytest.raises(ProviderError, match="no host"):
        bgp.bird_config(world(), "mars", {})


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2")
@pytest.mark.parametrize(
    "exports",
    [{}, {"web": bgp.Export.ANNOUNCE}, {"web": bgp.Export.GRACEFUL, "api": bgp.Export.ANNOUNCE}],
)
def test_bird_itself_accepts_every_rendered_config(
    exports: dict[str, bgp.Export], tmp_path: Path
) -> None:
    result = bird_accepts(render(world(), exports, timers=bgp.LAB_TIMERS), tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird2")
def test_bird_accepts_the_upstream_config(tmp_path: Path) -> None:
    text = bgp.render_upstream(
        router_id=ipaddress.IPv4Address("192.0.2.1"),
        asn=64500,
        downstreams=[bgp.Downstream("e1_v4", ipaddress.ip_address("192.0.2.2"), 65010)],
    )
    assert "merge paths on;" in text
    result = bird_accepts(text, tmp_path)
    assert result.returncode == 0, result.stderr
