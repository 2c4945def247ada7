"""Host-key pinning decisions, without a network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest

from fleet import errors
from fleet.model import SSHTarget
from reconciler.hosts import hostkeys


def key(seed: bytes, key_type: str = "ssh-ed25519") -> hostkeys.PublicKey:
    name = key_type.encode()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + seed.ljust(32, b"\0")
    return hostkeys.PublicKey(key_type, blob)


A, B = key(b"a"), key(b"b")
TARGET = SSHTarget("192.0.2.11", 2222, "root", None)


def test_parse_round_trips_and_rejects_mismatched_type():
    assert hostkeys.PublicKey.parse(A.openssh() + " comment") == A
    b64 = A.openssh().split()[1]
    with pytest.raises(ValueError, match="does not match"):
        hostkeys.PublicKey.parse(f"ssh-rsa {b64}")
    with pytest.raises(ValueError):
        hostkeys.PublicKey.parse("ssh-ed25519 !!!")


def test_fingerprint_is_openssh_sha256():
    digest = base64.b64encode(hashlib.sha256(A.blob).digest()).decode().rstrip("=")
    assert A.fingerprint == "SHA256:" + digest


def test_known_hosts_plain_hashed_negated_and_revoked():
    salt = b"0123456789abcdefghij"
    mac = hmac.new(salt, b"[192.0.2.11]:2222", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"
    kh = hostkeys.KnownHosts.parse(
        f"{hashed} {A.openssh()}\n"
        f"192.0.2.11 {B.openssh()}\n"  # port 22 only
        f"[192.0.2.*]:2222,![192.0.2.11]:2222 {B.openssh()}\n"
        f"@revoked * {B.openssh()}\n"
        "@cert-authority * ssh-ed25519 AAAA\n"
        "garbage\n"
    )
    pinned, revoked = kh.lookup("192.0.2.11", 2222)
    assert pinned == [A] and revoked == [B]
    assert kh.lookup("192.0.2.12", 2222)[0] == [B]


def test_check_accepts_pinned_refuses_unknown_changed_and_revoked():
    doc = SSHTarget("192.0.2.11", 2222, "root", A.openssh())
    policy = hostkeys.HostKeyPolicy()
    policy.check("sea-1", doc, A)
    with pytest.raises(errors.HostKeyMismatch, match="CHANGED") as info:
        policy.check("sea-1", doc, B)
    assert A.fingerprint in str(info.value) and B.fingerprint in str(info.value)
    with pytest.raises(errors.HostKeyMismatch, match=r"UNKNOWN.*no known_hosts file"):
        policy.check("sea-1", TARGET, A)
    revoking = hostkeys.HostKeyPolicy(hostkeys.KnownHosts.parse(f"@revoked * {A.openssh()}"))
    with pytest.raises(errors.HostKeyMismatch, match="revoked"):
        revoking.check("sea-1", doc, A)


def test_preferred_types_follow_the_pins():
    rsa = key(b"r", "ssh-rsa")
    kh = hostkeys.KnownHosts.parse(f"[192.0.2.11]:2222 {rsa.openssh()}")
    doc = SSHTarget("192.0.2.11", 2222, "root", A.openssh())
    assert hostkeys.HostKeyPolicy(kh).preferred_types("sea-1", doc) == ["ssh-ed25519", "ssh-rsa"]
