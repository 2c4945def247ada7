"""The initramfs: the guest init, busybox and the virtio modules, built once per kernel.

Base archive ``DATA/initramfs/<kernel>-<hash>.cpio`` (the hash covers the init
binary, busybox and the module list, so a change rebuilds it). Each machine's
initrd is that base with its own small ``machine.conf`` archive appended, which
the kernel unpacks on top.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from providers.guestinit import conf as guestconf
from providers.guestinit import cpio
from providers.vmm.kernel import Kernel

BUSYBOX = Path("/bin/busybox")


def base_members(kernel: Kernel, init_binary: Path, busybox: Path = BUSYBOX) -> list[cpio.Member]:
    members = [
        cpio.directory(d)
        for d in ("bin", "dev", "etc", "etc/fleet", "lib", "lib/modules", "newroot", "proc", "sys")
    ]
    members.append(cpio.chardev("dev/console", 5, 1))
    members.append(cpio.regular("init", init_binary.read_bytes(), 0o755))
    members.append(cpio.regular("bin/busybox", busybox.read_bytes(), 0o755))
    listing = []
    for path in kernel.module_paths():
        name = f"lib/modules/{path.name}"
        members.append(cpio.regular(name, path.read_bytes()))
        listing.append("/" + name)
    members.append(cpio.regular("etc/fleet/modules", ("\n".join(listing) + "\n").encode()))
    return members


def ensure_base(data_dir: Path, kernel: Kernel, init_binary: Path) -> Path:
    """The per-kernel base initramfs, built if absent."""
    members = base_members(kernel, init_binary)
    digest = hashlib.sha256()
    for m in members:
        digest.update(m.name.encode() + b"\0" + m.data)
    out_dir = data_dir / "initramfs"
    out = out_dir / f"{kernel.version}-{digest.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".initramfs-")
    with os.fdopen(fd, "wb") as f:
        f.write(cpio.archive(members))
    os.replace(tmp, out)
    return out


def write_machine_initrd(base: Path, cfg: guestconf.GuestConfig, dest: Path) -> None:
    """``dest`` = the base initramfs followed by this machine's config archive."""
    with open(dest, "wb") as out:
        out.write(base.read_bytes())
        out.write(guestconf.archive(cfg))
