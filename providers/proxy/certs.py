"""TLS material for the edge proxy: a lab certificate authority and per-app certificates.

Production fleets bring certificates from their own CA or ACME; the lab and
the tests need a CA of their own that clients can trust, and one certificate
per app naming its hostnames and anycast addresses. HAProxy loads every
``*.pem`` (certificate, chain and key in one file) of the certificate
directory and picks by SNI. EC P-256 keys: fast to make, fast to handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from providers.proxy import table as t

VALIDITY = datetime.timedelta(days=90)


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA: its certificate (PEM) and private key (PEM, never logged)."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "Authority(key=***)"

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_authority(name: str = "fleet lab CA") -> Authority:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + 10 * VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def load_or_create_authority(directory: Path) -> Authority:
    """The CA kept in ``directory`` (ca.pem, ca.key), made on first use."""
    cert, key = directory / "ca.pem", directory / "ca.key"
    if cert.exists() and key.exists():
        return Authority(cert.read_bytes(), key.read_bytes())
    ca = create_authority()
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key, ca.key_pem)
    cert.write_bytes(ca.cert_pem)
    return ca


def issue(ca: Authority, hostnames: Iterable[str], addresses: Iterable[str] = ()) -> bytes:
    """A server certificate for ``hostnames`` and IP ``addresses``: cert + CA + key, PEM."""
    names = list(hostnames)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    now = datetime.datetime.now(datetime.UTC)
    cn = names[0] if names else "fleet"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem + _key_pem(key)


def write_app_certificates(ca: Authority, table: t.RoutingTable, directory: Path) -> list[Path]:
    """One ``<app>.pem`` per app that terminates TLS, naming its hostnames and addresses.

    An existing certificate is kept while it names the same hostnames and
    addresses (rewriting would change the fingerprint and force a reload every
    time); apps that no longer terminate TLS lose theirs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, tuple[set[str], set[str]]] = {}
    for route in table.routes:
        if any(lst.tls for lst in route.listeners):
            hosts, addrs = wanted.setdefault(route.app, (set(), set()))
            hosts.update(route.hostnames)
            addrs.update(lst.address for lst in route.listeners)
    written = []
    for app, (hosts, addrs) in sorted(wanted.items()):
        path = directory / f"{app}.pem"
        if _names(path) != (sorted(hosts), sorted(addrs)):
            _write_private(path, issue(ca, sorted(hosts), sorted(addrs)))
        written.append(path)
    for old in directory.glob("*.pem"):
        if old.stem not in wanted:
            old.unlink()
    return written


def _names(path: Path) -> tuple[list[str], list[str]] | None:
    """The DNS names and IP addresses an existing certificate file names, sorted."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    ips = sorted(str(a) for a in san.get_values_for_type(x509.IPAddress))
    return sorted(san.get_values_for_type(x509.DNSName)), ips


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
