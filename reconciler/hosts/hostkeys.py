"""SSH host-key pinning: which keys a host may present, and what to say when it doesn't.

This module exists so that the trust decision is pure and testable without a
network: it parses OpenSSH public-key lines and known_hosts files (plain,
hashed ``|1|`` and ``[addr]:port`` entries, ``@revoked`` markers) into
:class:`PublicKey` values and compares the key blob a server presented with
the pinned ones. It imports no SSH library; the transport (``ssh.py``) hands it
the presented key's type and wire blob.

Policy: a key is accepted only if it equals a pinned key, from the Host
document's ``ssh.host_key`` or from the operator's known_hosts file. Unknown
and changed keys raise :class:`fleet.errors.HostKeyMismatch` whose message
carries both SHA256 fingerprints (as ``ssh-keygen -l`` prints them) and the
exact line that pins the presented key. Nothing is ever auto-accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet import errors
from fleet.model import SSHTarget

log = logging.getLogger(__name__)

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)


def fingerprint(blob: bytes) -> str:
    """The OpenSSH SHA256 fingerprint of a public-key blob: ``SHA256:<base64, no padding>``."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An SSH public key: its type name and its wire-format blob."""

    key_type: str
    blob: bytes = field(repr=False)

    @classmethod
    def parse(cls, line: str) -> PublicKey:
        """Parse an OpenSSH public-key line ``TYPE BASE64 [comment]``.

        Raises ``ValueError`` when the line is malformed or the blob's embedded
        type differs from the declared one.
        """
        parts = line.strip().split()
        if len(parts) < 2:
            raise ValueError("expected 'TYPE BASE64 [comment]'")
        key_type, b64 = parts[0], parts[1]
        try:
            blob = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"key data is not base64: {exc}") from exc
        if len(blob) < 4:
            raise ValueError("key data is too short")
        (n,) = struct.unpack(">I", blob[:4])
        embedded = blob[4 : 4 + n].decode("ascii", "replace")
        if embedded != key_type:
            raise ValueError(f"key type {key_type!r} does not match its data ({embedded!r})")
        return cls(key_type, blob)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def openssh(self) -> str:
        """The key as an OpenSSH line without comment: ``TYPE BASE64``."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"

    def describe(self) -> str:
        return f"{self.key_type} {self.fingerprint}"


def known_hosts_name(address: str, port: int) -> str:
    """The name OpenSSH looks up in known_hosts: ``addr`` on port 22, else ``[addr]:port``."""
    return address if port == 22 else f"[{address}]:{port}"


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt_b64, hash_b64 = pattern.split("|")
            salt = base64.b64decode(salt_b64)
            want = base64.b64decode(hash_b64)
        except (ValueError, binascii.Error):
            return False
        got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(got, want)
    # OpenSSH patterns know only * and ?; brackets are literal ([addr]:port).
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name, flags=re.IGNORECASE) is not None


def _host_field_matches(host_field: str, name: str) -> bool:
    matched = False
    for pattern in host_field.split(","):
        if pattern.startswith("!"):
            if _pattern_matches(pattern[1:], name):
                return False  # a negated match excludes the line outright
        elif _pattern_matches(pattern, name):
            matched = True
    return matched


@dataclass(frozen=True, slots=True)
class _Entry:
    hosts: str
    key: PublicKey
    revoked: bool


@dataclass(frozen=True, slots=True)
class KnownHosts:
    """An operator-controlled known_hosts file, parsed once."""

    path: str
    entries: tuple[_Entry, ...]

    @classmethod
    def load(cls, path: str | Path) -> KnownHosts:
        """Read ``path``. A missing file pins nothing (and the refusal message says so)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.warning("known_hosts file %s does not exist: it pins no host", p)
            return cls(str(p), ())
        return cls.parse(text, str(p))

    @classmethod
    def parse(cls, text: str, path: str = "<known_hosts>") -> KnownHosts:
        entries: list[_Entry] = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            revoked = False
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
                if marker == "@revoked":
                    revoked = True
                else:
                    log.debug("%s:%d: %s entries are not supported; skipped", path, lineno, marker)
                    continue
            if len(fields) < 3:
                log.warning("%s:%d: malformed known_hosts line skipped", path, lineno)
                continue
            try:
                key = PublicKey.parse(" ".join(fields[1:3]))
            except ValueError as exc:
                log.warning("%s:%d: unreadable key skipped: %s", path, lineno, exc)
                continue
            entries.append(_Entry(fields[0], key, revoked))
        return cls(path, tuple(entries))

    def lookup(self, address: str, port: int) -> tuple[list[PublicKey], list[PublicKey]]:
        """The (pinned, revoked) keys for ``address:port``."""
        name = known_hosts_name(address, port)
        pinned: list[PublicKey] = []
        revoked: list[PublicKey] = []
        for e in self.entries:
            if _host_field_matches(e.hosts, name):
                (revoked if e.revoked else pinned).append(e.key)
        return pinned, revoked


@dataclass(frozen=True, slots=True)
class Pin:
    """One pinned key and where the pin came from (for the refusal message)."""

    key: PublicKey
    origin: str


@dataclass(frozen=True, slots=True)
class HostKeyPolicy:
    """Pins from Host documents plus an optional operator known_hosts file."""

    known_hosts: KnownHosts | None = None

    def pins(self, host: str, target: SSHTarget) -> tuple[list[Pin], list[PublicKey]]:
        """Pinned keys (with origin) and revoked keys for one host."""
        pins: list[Pin] = []
        if target.host_key:
            try:
                key = PublicKey.parse(target.host_key)
                pins.append(Pin(key, "the Host document (ssh.host_key)"))
            except ValueError as exc:
                raise errors.HostKeyMismatch(
                    host, f"ssh.host_key in the Host document is unreadable: {exc}"
                ) from exc
        revoked: list[PublicKey] = []
        if self.known_hosts is not None:
            kh_pins, revoked = self.known_hosts.lookup(target.address, target.port)
            pins += [Pin(k, self.known_hosts.path) for k in kh_pins]
        return pins, revoked

    def preferred_types(self, host: str, target: SSHTarget) -> list[str]:
        """Key types to ask the server for, so it presents a pinned one if it has it."""
        pins, _ = self.pins(host, target)
        return list(dict.fromkeys(p.key.key_type for p in pins))

    def check(self, host: str, target: SSHTarget, presented: PublicKey) -> None:
        """Accept ``presented`` only if it is pinned; otherwise raise ``HostKeyMismatch``."""
        pins, revoked = self.pins(host, target)
        if any(r.blob == presented.blob for r in revoked):
            raise errors.HostKeyMismatch(
                host,
                f"{_where(target)} presented {presented.describe()}, which is marked "
                f"@revoked in {self.known_hosts.path if self.known_hosts else 'known_hosts'}",
            )
        if any(p.key.blob == presented.blob for p in pins):
            log.debug("host %s: key %s matches its pin", host, presented.fingerprint)
            return
        raise errors.HostKeyMismatch(host, self.refusal(host, target, presented, pins))

    def refusal(
        self, host: str, target: SSHTarget, presented: PublicKey, pins: Sequence[Pin]
    ) -> str:
        """The message for an unknown or changed key: both fingerprints and how to pin."""
        how = _how_to_pin(target, presented, self.known_hosts)
        if not pins:
            sources = "the Host document has no ssh.host_key" + (
                f" and {self.known_hosts.path} has no entry for "
                f"{known_hosts_name(target.address, target.port)}"
                if self.known_hosts
                else " and no known_hosts file is configured"
            )
            return (
                f"host key UNKNOWN for {_where(target)}: the server presented "
                f"{presented.describe()}; {sources}. Refusing to connect. "
                f"After checking that fingerprint out of band (ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{_short(presented.key_type)}_key.pub on the host), {how}"
            )
        pinned = "; ".join(f"{p.key.describe()} (from {p.origin})" for p in pins)
        return (
            f"host key CHANGED for {_where(target)}: pinned {pinned}, but the server "
            f"presented {presented.describe()}. Refusing to connect: this is either a "
            f"reinstalled host or a man-in-the-middle. If the change is expected and "
            f"verified out of band, replace the pin: {how}"
        )


def _where(target: SSHTarget) -> str:
    return f"{target.user}@{target.address}:{target.port}"


def _short(key_type: str) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key_type, "ecdsa")


def _how_to_pin(target: SSHTarget, presented: PublicKey, kh: KnownHosts | None) -> str:
    line = f"{known_hosts_name(target.address, target.port)} {presented.openssh()}"
    kh_path = kh.path if kh else "your known_hosts file"
    return (
        f'set `host_key: "{presented.openssh()}"` under spec.ssh in the Host document, '
        f"or put the line `{line}` into {kh_path} "
        f"(`ssh-keyscan -p {target.port} -t {_short(presented.key_type)} {target.address}` "
        "prints it)"
    )


def load_policy(known_hosts: str | Path | None) -> HostKeyPolicy:
    """The policy for a run: Host-document pins plus the operator's known_hosts, if given."""
    return HostKeyPolicy(KnownHosts.load(known_hosts) if known_hosts else None)


def describe_all(keys: Iterable[PublicKey]) -> str:
    return ", ".join(k.describe() for k in keys)
