"""The content-addressed blob cache: every blob is verified against its digest before use.

Blobs live at ``DATA/blobs/sha256/<hex>``. A blob is written to a temporary file
beside its final place while its SHA-256 and size are computed, and renamed
into place only when both match the descriptor, so a mismatch caches nothing.
Anything already in the cache was verified when it went in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fleet.errors import ImageError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class BlobStore:
    """Verified blobs by digest under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if (
            algo != "sha256"
            or len(hexpart) != 64
            or not all(c in "0123456789abcdef" for c in hexpart)
        ):
            raise ImageError(f"unsupported digest {digest!r}")
        return self.dir / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put_bytes(self, digest: str, data: bytes, *, what: str = "blob") -> Path:
        """Store ``data`` under ``digest`` after checking it matches."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ImageError(f"{what} {digest}: content has digest {actual}; nothing cached")
        dest = self.path(digest)
        if not dest.exists():
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".incoming-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, dest)
        return dest

    def ensure(
        self,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        *,
        what: str = "blob",
    ) -> tuple[Path, bool]:
        """The verified blob's path, copying it from ``opener()`` if absent.

        Returns (path, fetched). Raises :class:`ImageError` naming the blob if the
        bytes do not hash to ``digest`` or their size differs from ``size``.
        """
        dest = self.path(digest)
        if dest.is_file():
            return dest, False
        hasher = hashlib.sha256()
        count = 0
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, opener() as src:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    count += len(chunk)
                    if size >= 0 and count > size:
                        raise ImageError(
                            f"{what} {digest}: more than the {size} bytes its descriptor says; "
                            "nothing cached"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise ImageError(f"{what} {digest}: content has digest {actual}; nothing cached")
            if size >= 0 and count != size:
                raise ImageError(
                    f"{what} {digest}: {count} bytes, descriptor says {size}; nothing cached"
                )
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.debug("cached %s %s (%d bytes)", what, digest, count)
        return dest, True
