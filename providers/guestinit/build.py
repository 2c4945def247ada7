"""Compiling the guest init (``init.c``) into a static binary, once per source and compiler.

The binary is cached under ``DATA/guestinit/<hash>/init`` where the hash covers
the source and the compiler's version, so a changed init rebuilds and an
unchanged one never does. ``gcc -static`` against glibc needs only ``gcc`` and
``libc6-dev`` (both installed by ``scripts/setup``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from fleet.errors import VMMError

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("init.c")
CFLAGS = ("-static", "-Os", "-Wall", "-Wextra", "-ffile-prefix-map=/=", "-s")


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise VMMError(f"no C compiler {cc!r} to build the guest init (install gcc)") from exc


def ensure_init(data_dir: Path, cc: str = "gcc") -> Path:
    """The compiled guest init binary, built if absent."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + _compiler_version(cc).encode() + " ".join(CFLAGS).encode())
    dest_dir = data_dir / "guestinit" / key.hexdigest()[:16]
    binary = dest_dir / "init"
    if binary.is_file():
        return binary
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".init-")
    os.close(fd)
    proc = subprocess.run(
        [cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise VMMError(f"building the guest init failed: {proc.stderr.strip()[:2000]}")
    os.chmod(tmp, 0o755)  # noqa: S103 - an executable, as gcc would leave it
    os.replace(tmp, binary)
    log.info("built guest init %s", binary)
    return binary
