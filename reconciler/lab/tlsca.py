"""The lab's certificate authority: one CA for every lab host's edge proxy, trusted by the client.

Each host's agent signs the certificates of the apps its proxy terminates TLS
for with the CA it finds in ``<data dir>/proxy/ca`` (``ca.pem``, ``ca.key``;
see docs/proxy.md). ``lab up`` makes one CA and puts it there on every host, so
a client that trusts ``<lab dir>/ca.pem`` verifies any host's answer for an
anycast address. Production fleets install their own CA the same way (or
certificates from their own PKI: docs/proxy.md).
"""

from __future__ import annotations

from pathlib import Path

from providers.proxy import certs

AGENT_CA = Path("proxy") / "ca"  # under the agent's data directory


def install(lab_root: Path, host_data_dirs: list[Path]) -> Path:
    """Make the lab CA (kept in ``lab_root``) and copy it to every host; return its cert path."""
    ca = certs.load_or_create_authority(lab_root / "ca")
    for data_dir in host_data_dirs:
        target = data_dir / AGENT_CA
        target.mkdir(parents=True, exist_ok=True)
        (target / "ca.pem").write_bytes(ca.cert_pem)
        key = target / "ca.key"
        key.touch(mode=0o600)
        key.write_bytes(ca.key_pem)
    return lab_root / "ca" / "ca.pem"
