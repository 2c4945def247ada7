"""The per-machine configuration the guest init reads: NUL-separated ``key=value`` records.

Pure. Encodes a :class:`~providers.guestinit.launch.Launch` plus the machine's
identity, root device, network and stop policy into ``/etc/fleet/machine.conf``
(see the comment at the top of ``init.c`` for the keys), and wraps it in a
small cpio archive appended to the per-kernel initramfs.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from fleet.errors import VMMError
from providers.guestinit import cpio
from providers.guestinit.launch import Launch

CONF_PATH = "etc/fleet/machine.conf"


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """Everything the guest init needs besides the image itself."""

    launch: Launch
    nonce: str
    hostname: str
    rootdev: str = "/dev/vda"
    rootfstype: str = "ext4"
    readonly_root: bool = False
    addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    mtu: int = 0
    kill_signal: int = int(signal.SIGTERM)
    kill_timeout_ms: int = 5000
    probe: bool = False
    halt: str = "reboot"  # or "poweroff" (Cloud Hypervisor restarts a rebooting guest)


def signal_number(name: str | int) -> int:
    """``"SIGINT"``, ``"INT"``, ``"2"`` or 2 -> 2."""
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    key = str(name).upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        raise VMMError(f"unknown signal {name!r}") from None


def encode(cfg: GuestConfig) -> bytes:
    """The ``machine.conf`` bytes."""
    records: list[tuple[str, str]] = [
        ("nonce", cfg.nonce),
        ("hostname", cfg.hostname),
        ("rootdev", cfg.rootdev),
        ("rootfstype", cfg.rootfstype),
        ("rootflags", "ro" if cfg.readonly_root else "rw"),
        ("uid", str(cfg.launch.uid)),
        ("gid", str(cfg.launch.gid)),
        ("groups", ",".join(str(g) for g in cfg.launch.groups)),
        ("workdir", cfg.launch.workdir),
        ("kill_signal", str(cfg.kill_signal)),
        ("kill_timeout_ms", str(cfg.kill_timeout_ms)),
        ("halt", cfg.halt),
    ]
    if cfg.probe:
        records.append(("probe", "1"))
    if cfg.mtu:
        records.append(("mtu", str(cfg.mtu)))
    records += [("arg", a) for a in cfg.launch.argv]
    records += [("env", e) for e in cfg.launch.env]
    records += [("addr", a) for a in cfg.addresses]
    records += [("gw", g) for g in cfg.gateways]
    out = bytearray()
    for key, value in records:
        if "\0" in value:
            raise VMMError(f"guest config {key} contains a NUL byte")
        out += f"{key}={value}".encode() + b"\0"
    if len(out) > 200 * 1024:
        raise VMMError("guest config is larger than 200 KiB")
    return bytes(out)


def archive(cfg: GuestConfig) -> bytes:
    """The per-machine cpio archive appended to the base initramfs."""
    return cpio.archive(
        [cpio.directory("etc"), cpio.directory("etc/fleet"),
         cpio.regular(CONF_PATH, encode(cfg), 0o600)],
        first_ino=900_000,
    )  # fmt: skip
