"""Making the read-only root filesystem image of a flattened tree, without mounting.

``mkfs.ext4 -d`` copies a directory tree (with ownership, modes, symlinks and
hardlinks) into a new filesystem image as an ordinary user would write a file:
no loop device, no mount. The image is sized from the tree plus headroom, and
is sparse, so the headroom costs no disk until a machine's writable layer uses
it. Also reads the files the host needs from the tree (``/etc/passwd``,
``/etc/group``) the way the guest will see them.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from fleet.errors import ImageError

log = logging.getLogger(__name__)

BLOCK = 4096
MkfsFn = Callable[[Path, Path, int], None]


def tree_size(tree: Path) -> tuple[int, int]:
    """(bytes in 4 KiB blocks, inodes) that ``tree`` needs."""
    blocks = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        inodes += 1
        blocks += 1
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            inodes += 1
            if stat.S_ISREG(st.st_mode):
                blocks += (st.st_size + BLOCK - 1) // BLOCK
    return blocks * BLOCK, inodes


def image_size(tree: Path, headroom: int) -> int:
    """Bytes for a filesystem holding ``tree`` plus ``headroom`` free bytes."""
    data, inodes = tree_size(tree)
    metadata = inodes * 256 + (data // 32) + (8 << 20)
    size = data + metadata + headroom
    return (size + (1 << 20) - 1) // (1 << 20) * (1 << 20)


def run_mkfs_ext4(tree: Path, out: Path, size: int) -> None:
    """``mkfs.ext4 -d TREE`` into a new sparse image file of ``size`` bytes."""
    with open(out, "wb") as f:
        f.truncate(size)
    inodes = max(1024, sum(1 for _ in tree.rglob("*")) * 2 + 1024)
    cmd = [
        "mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", "256", "-m", "0",
        "-N", str(inodes), "-L", "rootfs",
        "-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
        "-d", str(tree), str(out),
    ]  # fmt: skip
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise ImageError(f"mkfs.ext4 failed: {proc.stderr.strip() or proc.returncode}")


def read_in_tree(tree: Path, path: str, limit: int = 1 << 20) -> str:
    """A small text file of the tree as the guest sees it (symlinks resolved inside), or ''."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    for _hop in range(40):
        if not parts:
            break
        comp = parts.pop(0)
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        host = tree.joinpath(*resolved, comp)
        if host.is_symlink():
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(comp)
    host = tree.joinpath(*resolved)
    if parts or not host.is_file() or host.is_symlink():
        return ""
    with open(host, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")
