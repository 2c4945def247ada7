"""Keys stay on the host (0600, only the public half comes back); addressing conventions."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest

from fleet.errors import ProviderError
from providers.network import addressing, rotation, wgkeys, wireguard
from tests.network import fleets


def test_key_file_is_0600_and_only_the_public_key_is_returned(tmp_path: Path) -> None:
    public = wgkeys.ensure_key(tmp_path / "keys", "wg-ams-1")
    path = wgkeys.key_path(tmp_path / "keys", "wg-ams-1")
    assert path.stat().st_mode & 0o777 == 0o600
    private = path.read_text().strip()
    assert private not in repr(public) and private != public.value
    assert wgkeys.is_key(private) and wgkeys.is_key(public.value)
    # Stable: a second call reads the same key instead of making a new one.
    assert wgkeys.ensure_key(tmp_path / "keys", "wg-ams-1") == public


def test_public_key_matches_wg_pubkey(tmp_path: Path) -> None:
    public = wgkeys.ensure_key(tmp_path, "k")
    out = subprocess.run(
        ["wg", "pubkey"],
        input=wgkeys.key_path(tmp_path, "k").read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == public.value


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    wgkeys.ensure_key(tmp_path, "k")
    os.chmod(wgkeys.key_path(tmp_path, "k"), 0o644)
    with pytest.raises(ProviderError, match="readable by others"):
        wgkeys.public_key(tmp_path, "k")


def test_staged_key_is_promoted_atomically(tmp_path: Path) -> None:
    old = wgkeys.ensure_key(tmp_path, "k")
    new = wgkeys.ensure_key(tmp_path, "k", staged=True)
    assert new != old
    assert wgkeys.promote_next(tmp_path, "k") == new
    assert wgkeys.public_key(tmp_path, "k") == new
    assert wgkeys.public_key(tmp_path, "k", staged=True) is None
    with pytest.raises(ProviderError, match="no staged key"):
        wgkeys.promote_next(tmp_path, "k")


def test_public_key_rejects_non_keys() -> None:
    with pytest.raises(ProviderError):
        wgkeys.PublicKey("not-a-key")


def test_mesh_and_machine_addresses_live_in_the_host_prefix() -> None:
    world = fleets.world(3)
    plan = addressing.host_addressing(world)
    for name, entry in plan.items():
        assert entry.prefix == world.host_prefixes[name]
        assert entry.mesh_address == entry.prefix.network_address + 1
        machine = addressing.machine_address(entry.prefix, "web/ams#1")
        assert machine in entry.prefix and machine != entry.mesh_address
        assert addressing.owner_of(machine, world.host_prefixes) == name
    assert addressing.fleet_prefix(world) == ipaddress.IPv6Network("fdf1:ee70::/48")
    assert addressing.owner_of(ipaddress.IPv6Address("2001:db8::1"), world.host_prefixes) is None


@pytest.mark.parametrize("host", ["ams-1", "a-very-long-host-name-1", "Weird Name!", "x"])
def test_interface_names_fit_and_differ(host: str) -> None:
    name = addressing.interface_name(host)
    assert len(name) <= addressing.IFNAMSIZ
    assert addressing.interface_name(host) == name
    assert addressing.interface_name(host + "2") != name


def test_rotation_stages_are_ordered_and_touch_only_the_rotating_peer() -> None:
    world = fleets.world(3)
    keys = fleets.keys_of(world)
    current = wireguard.host_peer(world, "h1", keys["h1"])
    new = fleets.fake_key("h1-next")
    stages = rotation.rotation_stages(current, new, world.fleet.hosts)
    assert [s.name for s in stages] == ["introduce", "switch", "move", "retire"]
    introduce, switch, move, retire = stages
    assert {s.host for s in introduce.steps} == {"h2", "h3"}
    for step in introduce.steps:
        assert step.op is not None
        # Carries no traffic and sends no handshakes before h1 switches.
        assert (step.op.kind, step.op.public_key, step.op.allowed_ips, step.op.keepalive) == (
            wireguard.OpKind.ADD,
            new,
            (),
            0,
        )
    assert [(s.host, s.kind) for s in switch.steps] == [("h1", rotation.StepKind.SWITCH_KEY)]
    assert move.run_immediately_after_previous
    for step in move.steps:
        assert step.op is not None and step.op.allowed_ips == current.allowed_ips
        assert step.op.public_key == new
    for step in retire.steps:
        assert step.op is not None
        assert step.op.wg_args() == ("peer", keys["h1"], "remove")
    assert rotation.rotation_stages(current, keys["h1"], world.fleet.hosts) == ()
