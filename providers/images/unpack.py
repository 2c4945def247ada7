"""Flattening image layers into one directory tree, refusing anything hostile.

Layers are applied lowest first. Whiteouts (``.wh.NAME``) and opaque markers
(``.wh..wh..opq``) hide what lower layers put there, never what the same layer
adds. Symlinks, hardlinks, permissions and ownership are kept; device nodes
and extended attributes are skipped with a note (a microVM gets its /dev from
devtmpfs).

Refused as hostile, with nothing written outside ``root``: absolute names and
``..`` components, writes through a symlink that climbs out of the root (an
absolute symlink is read as the guest reads it, relative to the root),
hardlinks to anything outside, and layers that decompress past
:attr:`Limits.max_image_bytes`. Paths are resolved one component at a time with
``lstat``; nothing here ever follows a symlink the guest would not.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fleet.errors import ImageError

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40


class HostileLayer(ImageError):
    """A layer tried to write outside the root or to exhaust the disk."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one image may expand to."""

    max_image_bytes: int = 16 << 30
    max_entries: int = 2_000_000


@dataclass(slots=True)
class Budget:
    """What the layers of one image have used so far (mutable, per build)."""

    limits: Limits
    bytes: int = 0
    entries: int = 0
    notes: list[str] = field(default_factory=list)


class _Meter:
    """Counts and hashes the decompressed bytes of a layer; stops a decompression bomb."""

    def __init__(self, raw: BinaryIO, budget: Budget, what: str) -> None:
        self.raw = raw
        self.budget = budget
        self.what = what
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n and n > 0 else 1 << 20)
        self.budget.bytes += len(data)
        if self.budget.bytes > self.budget.limits.max_image_bytes:
            raise HostileLayer(
                f"{self.what}: image expands past the limit of "
                f"{self.budget.limits.max_image_bytes} bytes; refused"
            )
        self.hasher.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.hasher.hexdigest()


def open_decompressed(blob: BinaryIO, what: str) -> BinaryIO:
    """The uncompressed tar stream of a (seekable) layer blob, whatever its compression."""
    head = blob.read(4)
    blob.seek(-len(head), os.SEEK_CUR)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=blob, mode="rb")  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        raise ImageError(f"{what}: zstd-compressed layers are not supported")
    return blob


def _split(name: str, what: str) -> list[str]:
    if name.startswith("/"):
        raise HostileLayer(f"{what}: absolute path {name!r} refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileLayer(f"{what}: path {name!r} with '..' refused")
    return parts


class Unpacker:
    """Applies layers to ``root`` (a fresh directory inside the cache)."""

    def __init__(self, root: Path, budget: Budget) -> None:
        self.root = root
        self.budget = budget
        self.as_root = os.geteuid() == 0
        # directory paths as named in the tar -> the same directory with every symlink resolved
        self._dirs: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}
        if not self.as_root:
            budget.notes.append("not running as root: file ownership is not kept")

    # -- path resolution -------------------------------------------------

    def _host(self, parts: tuple[str, ...] | list[str]) -> Path:
        return self.root.joinpath(*parts)

    def _resolve_dir(self, parts: list[str], what: str, *, create: bool) -> tuple[str, ...]:
        """Resolve directory components inside the root, following symlinks as the guest would."""
        key = tuple(parts)
        known = self._dirs.get(key)
        if known is not None:
            return known
        resolved: list[str] = []
        pending = list(parts)
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if not resolved:
                    raise HostileLayer(f"{what}: a symlink on the way escapes the root; refused")
                resolved.pop()
                continue
            host = self._host([*resolved, comp])
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if not create:
                    raise ImageError(f"{what}: {'/'.join(parts)} does not exist") from None
                os.mkdir(host, 0o755)
                resolved.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(f"{what}: too many symlinks resolving {'/'.join(parts)}")
                target = os.readlink(host)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError(f"{what}: {'/'.join([*resolved, comp])} is not a directory")
            resolved.append(comp)
        result = tuple(resolved)
        self._dirs[key] = result
        self._dirs[result] = result
        return result

    def _remove(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._dirs = {(): ()}  # a directory (or a symlink on a path) may be gone

    # -- one layer -------------------------------------------------------

    def apply(self, blob: BinaryIO, *, what: str, diff_id: str = "") -> None:
        """Apply one layer blob; verify its uncompressed digest against ``diff_id`` if given."""
        meter = _Meter(open_decompressed(blob, what), self.budget, what)
        added: set[tuple[str, ...]] = set()
        try:
            with tarfile.open(fileobj=meter, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    self.budget.entries += 1
                    if self.budget.entries > self.budget.limits.max_entries:
                        raise HostileLayer(
                            f"{what}: more than {self.budget.limits.max_entries} entries; refused"
                        )
                    self._entry(tar, member, added, what)
        except tarfile.TarError as exc:
            raise ImageError(f"{what}: not a valid tar stream: {exc}") from exc
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"{what}: cannot read layer: {exc}") from exc
        actual = meter.drain()
        if diff_id and actual != diff_id:
            raise ImageError(f"{what}: uncompressed digest {actual} differs from diff_id {diff_id}")

    def _entry(
        self,
        tar: tarfile.TarFile,
        member: tarfile.TarInfo,
        added: set[tuple[str, ...]],
        what: str,
    ) -> None:
        parts = _split(member.name, what)
        if not parts:
            return  # the root directory itself
        base = parts[-1]
        if base.startswith(WHITEOUT):
            parent = self._resolve_dir(parts[:-1], what, create=True)
            if base == OPAQUE:
                self._opaque(parent, added)
            elif base.startswith(WHITEOUT + WHITEOUT):
                self.budget.notes.append(f"{what}: skipped special whiteout {member.name}")
            else:
                victim = (*parent, base[len(WHITEOUT) :])
                if victim not in added:
                    self._remove(self._host(victim))
            return
        parent = self._resolve_dir(parts[:-1], what, create=True)
        rel = (*parent, base)
        target = self._host(rel)
        if member.isdir():
            try:
                is_dir = stat.S_ISDIR(os.lstat(target).st_mode)
            except FileNotFoundError:
                is_dir = False
            if not is_dir:
                self._remove(target)
                os.mkdir(target, 0o700)
            self._dirs[rel] = rel
        elif member.isreg():
            self._remove(target)
            src = tar.extractfile(member)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                if src is not None:
                    shutil.copyfileobj(src, out, 1 << 20)
        elif member.issym():
            self._remove(target)
            os.symlink(member.linkname, target)
        elif member.islnk():
            self._hardlink(member, target, what)
        elif member.isfifo():
            self._remove(target)
            os.mkfifo(target, 0o600)
        else:
            kind = "device node" if member.ischr() or member.isblk() else "entry"
            self.budget.notes.append(f"{what}: skipped {kind} {member.name}")
            return
        added.add(rel)
        if any(k.startswith("SCHILY.xattr.") for k in member.pax_headers):
            self.budget.notes.append(f"{what}: extended attributes of {member.name} not kept")
        if not member.islnk():
            self._metadata(target, member)

    def _hardlink(self, member: tarfile.TarInfo, target: Path, what: str) -> None:
        if member.linkname.startswith("/"):
            raise HostileLayer(f"{what}: hardlink {member.name} to absolute {member.linkname!r}")
        lparts = _split(member.linkname, what)
        if not lparts:
            raise HostileLayer(f"{what}: hardlink {member.name} to the root refused")
        lparent = self._resolve_dir(lparts[:-1], what, create=False)
        source = self._host((*lparent, lparts[-1]))
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise ImageError(
                f"{what}: hardlink {member.name} to missing {member.linkname}"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise HostileLayer(f"{what}: hardlink {member.name} to a directory refused")
        if source == target:
            return
        self._remove(target)
        os.link(source, target, follow_symlinks=False)

    def _opaque(self, parent: tuple[str, ...], added: set[tuple[str, ...]]) -> None:
        host = self._host(parent)
        for name in os.listdir(host):
            if (*parent, name) not in added:
                self._remove(host / name)

    def _metadata(self, target: Path, member: tarfile.TarInfo) -> None:
        link = member.issym()
        if self.as_root:
            os.chown(target, member.uid, member.gid, follow_symlinks=False)
        if not link:
            mode = member.mode & 0o7777
            if not self.as_root and member.isdir():
                mode |= 0o700
            os.chmod(target, mode)
        if not member.isdir():
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
