"""Generate a large, valid fleet as YAML files, for benchmarks.

``generate(directory, hosts=1000, apps=200, machines=10000, edges=2)`` writes a
Network, regions with their hosts (one file per region), and one file per app,
spread so that every app fits. ``edges`` hosts per region are marked as edges
(``spec.edge: true``; they route and announce every public app), as a fleet of
this size would; ``edges=0`` marks none, so every host is an edge (the default
of a small fleet, and the worst case for the plan). Deterministic for a given
set of arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REGIONS = 10
JURISDICTIONS = ("eu", "us")


def generate(
    directory: str | Path,
    hosts: int = 1000,
    apps: int = 200,
    machines: int = 10000,
    edges: int = 2,
) -> Path:
    root = Path(directory)
    (root / "regions").mkdir(parents=True, exist_ok=True)
    (root / "apps").mkdir(parents=True, exist_ok=True)
    (root / "network.yaml").write_text(
        "apiVersion: fleet/v1\nkind: Network\nmetadata:\n  name: bench\nspec:\n"
        "  private_prefix: fd00:be:1::/48\n"
        "  anycast_pools: [198.51.100.0/24, 203.0.113.0/24, 2001:db8:100::/48]\n"
    )
    regions = [f"r{i:02d}" for i in range(REGIONS)]
    per_region = hosts // REGIONS
    for r, region in enumerate(regions):
        docs = [
            f"apiVersion: fleet/v1\nkind: Region\nmetadata:\n  name: {region}\nspec:\n"
            f"  jurisdiction: {JURISDICTIONS[r % 2]}\n  asn: {65100 + r}\n"
            f"  upstream_peers:\n    - address: 192.0.2.{r + 1}\n      asn: {64500 + r}\n"
        ]
        for h in range(per_region):
            n = r * per_region + h
            gpus = "    gpus:\n      - model: l4\n        count: 2\n" if h % 10 == 0 else ""
            docs.append(
                f"apiVersion: fleet/v1\nkind: Host\nmetadata:\n  name: {region}-h{h:04d}\n"
                f"  labels:\n    rack: r{h % 8}\n    disk: ssd\n"
                f"spec:\n  region: {region}\n"
                f"  ssh:\n    address: 2001:db8:1::{n + 1:x}\n"
                f"    port: 22\n    user: root\n"
                f"  capacity:\n    cpus: 32\n    memory: 128gb\n{gpus}"
                f"  hypervisor: qemu\n"
                f"{'  edge: true' + chr(10) if h < edges else ''}"
                f"  wireguard:\n    endpoint: 10.{n // 65536}.{n // 256 % 256}.{n % 256}:51820\n"
            )
        (root / "regions" / f"{region}.yaml").write_text("---\n".join(docs))
    per_app = machines // apps
    for a in range(apps):
        own = [regions[(a + i) % REGIONS] for i in range(2)]
        split = {own[0]: per_app - per_app // 2, own[1]: per_app // 2}
        region_lines = "".join(f"    {r}: {c}\n" for r, c in split.items())
        (root / "apps" / f"app{a:03d}.yaml").write_text(
            f"apiVersion: fleet/v1\nkind: App\nmetadata:\n  name: app{a:03d}\nspec:\n"
            f"  image: registry.example/team/app{a:03d}:v1\n"
            f"  regions:\n{region_lines}"
            f"  vm:\n    cpus: 1\n    memory: 256mb\n"
            f"  env:\n    APP_NAME: app{a:03d}\n    LOG_LEVEL: info\n"
            f"  services:\n    - internal_port: 8080\n      ports:\n"
            f"        - port: 80\n          handlers: [http]\n"
            f"        - port: 443\n          handlers: [tls, http]\n"
            f"      concurrency:\n        type: requests\n        soft_limit: 20\n"
            f"        hard_limit: 25\n"
            f"  checks:\n    alive:\n      port: 8080\n      path: /healthz\n"
            f"  deploy:\n    strategy: rolling\n"
        )
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("directory")
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--apps", type=int, default=200)
    p.add_argument("--machines", type=int, default=10000)
    p.add_argument("--edges", type=int, default=2, help="edge hosts per region (0: all)")
    a = p.parse_args()
    generate(a.directory, a.hosts, a.apps, a.machines, a.edges)


if __name__ == "__main__":
    main()
