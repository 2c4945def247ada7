"""The lab CA and per-app certificates: a client trusting the CA accepts them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from providers.proxy import certs
from providers.proxy import table as t


def test_issued_certificate_names_the_app_and_chains_to_the_ca(tmp_path: Path) -> None:
    ca = certs.load_or_create_authority(tmp_path / "ca")
    assert certs.load_or_create_authority(tmp_path / "ca") == ca  # kept, not remade
    assert "***" in repr(ca)
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    lst = (t.Listener("198.51.100.10", 443, True, True),)
    route = t.Route("hello", 0, t.Mode.HTTP, lst, (), ("hello.fleet.test",))
    plain = t.Route("plain", 0, t.Mode.HTTP, (t.Listener("198.51.100.11", 80, False, True),), ())
    paths = certs.write_app_certificates(
        ca, t.RoutingTable("h", "r", (route, plain)), tmp_path / "certs"
    )
    assert [p.name for p in paths] == ["hello.pem"]
    pem = paths[0].read_bytes()
    assert b"PRIVATE KEY" in pem
    leaf = x509.load_pem_x509_certificate(pem)
    leaf.verify_directly_issued_by(ca.certificate)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hello.fleet.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.51.100.10")]


def test_certificate_is_kept_until_its_names_change(tmp_path: Path) -> None:
    ca = certs.create_authority()
    lst = (t.Listener("198.51.100.10", 443, True, True),)
    first = t.Route("hello", 0, t.Mode.HTTP, lst, (), ("hello.fleet.test",))
    (path,) = certs.write_app_certificates(ca, t.RoutingTable("h", "r", (first,)), tmp_path)
    pem = path.read_bytes()
    certs.write_app_certificates(ca, t.RoutingTable("h", "r", (first,)), tmp_path)
    assert path.read_bytes() == pem  # unchanged: no needless reload
    renamed = t.Route("hello", 0, t.Mode.HTTP, lst, (), ("hello.example.org",))
    certs.write_app_certificates(ca, t.RoutingTable("h", "r", (renamed,)), tmp_path)
    leaf = x509.load_pem_x509_certificate(path.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hello.example.org"]
