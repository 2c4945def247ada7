"""Benchmark: the fleet-wide WireGuard peer sets and every host's diff, for 500 hosts.

Times (best of N) ``wireguard.peer_sets`` for the whole fleet, and the
steady-state diff of every host (observed = desired, so each host's diff is
empty) plus the "one host added" diff on every host. Goal (issue 7): < 1 s.
"""

from __future__ import annotations

import argparse
import time

from providers.network import wireguard
from providers.network.wireguard import ObservedPeer
from tests.network import fleets


def best(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    world = fleets.world(args.hosts)
    keys = fleets.keys_of(world)
    sets = wireguard.peer_sets(world, keys)
    observed = {
        host: {
            k: ObservedPeer(k, p.endpoint, p.allowed_ips, 0, 0, 0, p.keepalive)
            for k, p in s.peers.items()
        }
        for host, s in sets.items()
    }
    smaller = dict(keys)
    newcomer = max(keys)
    del smaller[newcomer]
    before = wireguard.peer_sets(world, smaller)
    observed_before = {
        host: {
            k: ObservedPeer(k, p.endpoint, p.allowed_ips, 0, 0, 0, p.keepalive)
            for k, p in s.peers.items()
        }
        for host, s in before.items()
    }

    def compute() -> None:
        wireguard.peer_sets(world, keys)

    def steady() -> None:
        for host, s in wireguard.peer_sets(world, keys).items():
            assert wireguard.peer_ops(s.peers, observed[host], s.peers) == ()

    def one_added() -> None:
        for host, s in wireguard.peer_sets(world, keys).items():
            if host == newcomer:
                continue
            ops = wireguard.peer_ops(s.peers, observed_before[host], before[host].peers)
            assert len(ops) == 1

    peers = sum(len(s.peers) for s in sets.values())
    print(f"hosts: {args.hosts}, peer entries fleet-wide: {peers}")
    t1 = best(compute, args.runs)
    t2 = best(steady, args.runs)
    t3 = best(one_added, args.runs)
    print(f"peer sets:                      {t1 * 1000:8.1f} ms")
    print(f"peer sets + diff (no change):   {t2 * 1000:8.1f} ms")
    print(f"peer sets + diff (host added):  {t3 * 1000:8.1f} ms")
    worst = max(t1, t2, t3)
    print(f"goal < 1000 ms: {'met' if worst < 1.0 else 'MISSED'} ({worst * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
