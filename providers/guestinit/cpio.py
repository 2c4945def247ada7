"""A writer of ``newc`` cpio archives, the format the kernel unpacks as an initramfs.

Pure and deterministic (inode numbers by order, mtime 0, owner root), and able
to add device nodes without root, which ``cpio -o`` from a staging directory
cannot. Several archives concatenated form one initramfs; the agent appends a
small per-machine archive to the per-kernel base.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member: a regular file, directory, symlink or character device."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(ino: int, member: Member) -> bytes:
    name = member.name.lstrip("/").encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(member.mode) else 1
    fields = [
        ino, member.mode, 0, 0, nlink, 0, len(member.data), 0, 0,
        member.rdev[0], member.rdev[1], len(name), 0,
    ]  # fmt: skip
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    return head + name + _pad(len(head) + len(name))


def archive(members: list[Member], *, first_ino: int = 1) -> bytes:
    """The newc archive of ``members`` (in order), with its trailer."""
    out = bytearray()
    for i, member in enumerate([*members, Member(TRAILER, 0)]):
        ino = 0 if member.name == TRAILER else first_ino + i
        out += _header(ino, member)
        out += member.data + _pad(len(member.data))
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name, stat.S_IFDIR | mode)


def regular(name: str, data: bytes, mode: int = 0o644) -> Member:
    return Member(name, stat.S_IFREG | mode, data)


def symlink(name: str, target: str) -> Member:
    return Member(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, mode: int = 0o600) -> Member:
    return Member(name, stat.S_IFCHR | mode, rdev=(major, minor))
