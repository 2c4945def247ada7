"""Benchmark (a): image -> bootable root filesystem, against skopeo + umoci + mkfs.ext4.

The image is built here, offline: busybox-static, Debian's Python standard
library (/usr/lib/python3.11, ~54 MB, ~1,900 entries, a realistic pile of small
files) and an app layer with whiteouts. Each side starts from the same OCI
layout and ends with an ext4 image:

- ours:     ImageStore.prepare("oci:LAYOUT") with an empty cache (verify + copy
            blobs, flatten, mkfs.ext4 -d)
- baseline: skopeo copy oci:LAYOUT oci:COPY, umoci unpack, mkfs.ext4 -d
            (same size and options)

Then the cache hit: prepare() again on a fresh ImageStore over the warm cache
(what a second machine of the image costs). Goals: ratio <= 1.0, hit <= 100 ms.
Run: ``.venv/bin/python bench/image_build.py [--runs N]`` (as root, like the agent).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from providers.images import layout, rootfs, samples, store

STDLIB = Path("/usr/lib/python3.11")


def build_image(dest: Path) -> None:
    entries: list[layout.Entry] = []
    for dirpath, dirnames, filenames in os.walk(STDLIB):
        dirnames.sort()
        rel = Path("usr/lib/python3.11") / Path(dirpath).relative_to(STDLIB)
        entries.append(layout.directory(str(rel)))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_symlink():
                entries.append(layout.symlink(str(rel / name), os.readlink(full)))
            elif full.is_file():
                entries.append(layout.file(str(rel / name), full.read_bytes(), 0o644))
    app = [
        layout.file("usr/lib/python3.11/.wh.turtle.py", ""),
        layout.file("usr/lib/python3.11/email/.wh..wh..opq", ""),
        layout.file("usr/lib/python3.11/email/__init__.py", "# replaced\n"),
        layout.file("srv/app.py", "print('hi')\n"),
    ]
    spec = layout.ImageSpec(
        [
            layout.layer_tar(samples.base_entries()),
            layout.layer_tar(entries),
            layout.layer_tar(app),
        ],
        {"Cmd": ["/bin/sh"]},
    )
    layout.write_oci_layout(dest, spec, tag="bench")


def ours(layout_dir: Path, work: Path) -> float:
    data = work / "data"
    t = time.perf_counter()
    store.ImageStore(data).prepare(f"oci:{layout_dir}:bench")
    return time.perf_counter() - t


def cache_hit(layout_dir: Path, work: Path, n: int = 20) -> list[float]:
    data = work / "data"
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s = store.ImageStore(data)
        s.prepare(f"oci:{layout_dir}:bench")
        times.append(time.perf_counter() - t)
        assert s.stats.mkfs_runs == 0 and s.stats.layers_unpacked == 0
    return times


def baseline(layout_dir: Path, work: Path) -> float:
    copy, bundle, image = work / "copy", work / "bundle", work / "base.ext4"
    t = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{layout_dir}:bench", f"oci:{copy}:bench"], check=True
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{copy}:bench", str(bundle)],
        check=True,
        capture_output=True,
    )
    tree = bundle / "rootfs"
    rootfs.run_mkfs_ext4(tree, image, rootfs.image_size(tree, 1 << 30))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-image-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        build_image(root / "layout")
        blobs = sum(p.stat().st_size for p in (root / "layout/blobs/sha256").iterdir())
        print(f"image: {blobs / 1e6:.1f} MB of blobs (3 layers, gzip), from {STDLIB}")
        ours_t, base_t = [], []
        hits: list[float] = []
        for i in range(args.runs):
            for name, fn, acc in (("ours", ours, ours_t), ("baseline", baseline, base_t)):
                work = root / f"{name}-{i}"
                work.mkdir()
                acc.append(fn(root / "layout", work))
                if name == "ours" and i == 0:
                    hits = cache_hit(root / "layout", work)
                shutil.rmtree(work)
        o, b = statistics.median(ours_t), statistics.median(base_t)
        print(f"{'':28}{'ours':>10}{'baseline':>12}{'ratio':>8}")
        print(f"{'image -> rootfs (median s)':28}{o:>10.3f}{b:>12.3f}{o / b:>8.2f}   goal <= 1.0")
        print(
            f"{'  runs':28}{' '.join(f'{x:.3f}' for x in ours_t):>10}   "
            f"{' '.join(f'{x:.3f}' for x in base_t)}"
        )
        print(
            f"cache hit (new store, warm cache): median {statistics.median(hits) * 1000:.1f} ms, "
            f"max {max(hits) * 1000:.1f} ms over {len(hits)}   goal <= 100 ms"
        )


if __name__ == "__main__":
    main()
