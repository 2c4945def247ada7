"""Benchmark: load+validate a large fleet vs merely parsing its files with the C YAML loader.

Prints both times (best of N runs, in one process, side by side) and the ratio.
Goal (issue 2): ratio <= 3.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from bench import genfleet
from fleet import load


def parse_only(root: Path) -> int:
    count = 0
    for path in sorted(root.rglob("*.yaml")):
        count += len(list(yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader)))
    return count


def best(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--apps", type=int, default=200)
    p.add_argument("--machines", type=int, default=10000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = genfleet.generate(tmp, a.hosts, a.apps, a.machines)
        fleet = load.load_dir(root)
        print(
            f"fleet: {len(fleet.hosts)} hosts, {len(fleet.apps)} apps, "
            f"{sum(x.machine_count for x in fleet.apps.values())} machine slots"
        )
        t_parse = best(lambda: parse_only(root), a.runs)
        t_load = best(lambda: load.load_dir(root), a.runs)
    print(f"C YAML parse only:  {t_parse * 1000:8.1f} ms")
    print(f"load + validate:    {t_load * 1000:8.1f} ms")
    print(f"ratio:              {t_load / t_parse:8.2f}x  (goal <= 3)")


if __name__ == "__main__":
    main()
