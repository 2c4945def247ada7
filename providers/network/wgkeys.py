"""WireGuard keys on the host: generated here, kept here, only the public half leaves.

This runs on the host (the agent calls it). The private key is written to a
file created with mode 0600 (never widened afterwards) and is never returned,
logged or put in an inventory: callers get the :class:`PublicKey`, and the
driver hands the *path* to ``wg set ... private-key PATH``. X25519 from
``cryptography`` gives exactly the keys ``wg genkey``/``wg pubkey`` would.

Rotation keeps two files: ``<name>.key`` (in use) and ``<name>.next.key``
(staged); :func:`promote_next` makes the staged key current once every peer
knows it (see :mod:`providers.network.rotation`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from fleet.errors import ProviderError

log = logging.getLogger(__name__)

KEY_BYTES = 32


@dataclass(frozen=True, slots=True, order=True)
class PublicKey:
    """A WireGuard public key in wg's base64 form; safe to log and ship."""

    value: str

    def __post_init__(self) -> None:
        if not is_key(self.value):
            raise ProviderError(f"not a WireGuard public key: {self.value!r}")

    def __str__(self) -> str:
        return self.value

    @property
    def short(self) -> str:
        """The first characters, as logs and plans show a key."""
        return self.value[:8]


def is_key(text: str) -> bool:
    """True when ``text`` is 32 bytes in standard base64 (44 characters)."""
    if len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == KEY_BYTES
    except binascii.Error:
        return False


def key_path(directory: Path, name: str, *, staged: bool = False) -> Path:
    return directory / (f"{name}.next.key" if staged else f"{name}.key")


def _public_of(raw_private: bytes) -> PublicKey:
    private = x25519.X25519PrivateKey.from_private_bytes(raw_private)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return PublicKey(base64.b64encode(raw).decode())


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ProviderError(f"{path}: private key is readable by others (mode {mode:o})")
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except binascii.Error as exc:
        raise ProviderError(f"{path}: not a WireGuard private key") from exc
    if len(raw) != KEY_BYTES:
        raise ProviderError(f"{path}: not a WireGuard private key")
    return raw


def _write_private(path: Path) -> bytes:
    """Create ``path`` 0600 from the first byte on (no window where it is wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = x25519.X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(raw) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return raw


def ensure_key(directory: Path, name: str, *, staged: bool = False) -> PublicKey:
    """The public key of ``name``'s private key, generating the key the first time."""
    path = key_path(directory, name, staged=staged)
    if path.exists():
        return _public_of(_read_private(path))
    public = _public_of(_write_private(path))
    log.info("generated WireGuard key %s for %s at %s", public.short, name, path)
    return public


def public_key(directory: Path, name: str, *, staged: bool = False) -> PublicKey | None:
    """The public key of an existing key file (None when there is none)."""
    path = key_path(directory, name, staged=staged)
    return _public_of(_read_private(path)) if path.exists() else None


def promote_next(directory: Path, name: str) -> PublicKey:
    """Make the staged key current (atomic rename); the old private key is gone."""
    staged = key_path(directory, name, staged=True)
    if not staged.exists():
        raise ProviderError(f"{staged}: no staged key to promote")
    public = _public_of(_read_private(staged))
    os.replace(staged, key_path(directory, name))
    return public
