"""Flattening layers: whiteouts, links, ownership, and refusing hostile tars.

These run the real unpacker on real tar streams into a temporary directory;
the hostile cases check that nothing appears outside the cache directory.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.errors import ImageError
from providers.images import layout, store, unpack
from providers.images.layout import directory, file, hardlink, symlink
from tests.providers.images_util import all_files, image, tree_listing


def apply_all(
    root: Path,
    layers: list[list[layout.Entry]],
    limits: unpack.Limits | None = None,
    gz: bool = False,
) -> unpack.Budget:
    budget = unpack.Budget(limits or unpack.Limits())
    u = unpack.Unpacker(root, budget)
    for i, entries in enumerate(layers):
        raw = layout.layer_tar(entries)
        blob = io.BytesIO(gzip.compress(raw) if gz else raw)
        u.apply(blob, what=f"layer{i}")
    return budget


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_all(
        root,
        [
            [
                directory("a"),
                file("a/keep", "k"),
                file("a/gone", "g"),
                directory("d"),
                file("d/old1", "1"),
                directory("d/sub"),
                file("d/sub/old2", "2"),
                file("top", "t"),
            ],
            [
                file("a/.wh.gone", ""),
                file("d/.wh..wh..opq", ""),
                file("d/new", "n"),
                file(".wh.top", ""),
            ],
            # same-layer rule: a whiteout hides lower layers only, never a sibling added with it
            [file("x", "x"), file(".wh.x", "")],
        ],
        gz=True,
    )
    assert all_files(root) == {"a", "a/keep", "d", "d/new", "x"}


def test_links_modes_and_owners_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    budget = apply_all(
        root,
        [
            [
                directory("usr/lib", 0o755),
                symlink("lib", "usr/lib"),
                file("lib/libx.so", "code", 0o755, 0, 0),  # written through an in-root symlink
                file("bin/tool", "tool", 0o4755, 0, 0),
                hardlink("bin/tool2", "bin/tool"),
                file("home/u/f", "mine", 0o600, 1000, 1000),
                layout.Entry("dev/null", "chardev"),
            ]
        ],
    )
    assert os.readlink(root / "lib") == "usr/lib"
    assert (root / "usr/lib/libx.so").read_text() == "code"
    assert os.stat(root / "bin/tool").st_mode & 0o7777 == 0o4755
    assert os.stat(root / "bin/tool").st_ino == os.stat(root / "bin/tool2").st_ino
    if os.geteuid() == 0:
        st = os.stat(root / "home/u/f")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o600)
    assert not (root / "dev/null").exists()
    assert any("device node dev/null" in n for n in budget.notes)


def test_absolute_symlink_parent_resolves_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"  # where the host would land if it followed the symlink
    target = str(outside)  # an absolute target: in the guest it means ROOT/<that path>
    apply_all(
        root,
        [
            [symlink("conf", target), file("conf/app.ini", "x")],
            # the second write through the same symlink must resolve inside the root too
            [file("conf/second.ini", "y"), directory("conf/sub"), file("conf/sub/third", "z")],
        ],
    )
    inside = root / target.lstrip("/")
    assert (inside / "app.ini").read_text() == "x"
    assert (inside / "second.ini").read_text() == "y"
    assert (inside / "sub/third").read_text() == "z"
    assert not outside.exists()


def test_file_replacing_directory_and_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_all(
        root,
        [
            [directory("p"), file("p/f", "1")],
            [file("p", "now a file")],
            [directory("p"), file("p/g", "2")],
        ],
    )
    assert all_files(root) == {"p", "p/g"}


HOSTILE = {
    "dotdot": [[file("../../../../pwned-dotdot", "x")]],
    "dotdot-inner": [[directory("a"), file("a/../../../../../pwned-inner", "x")]],
    "symlink-escape": [[symlink("evil", "../../../.."), file("evil/pwned-symlink", "x")]],
    "symlink-escape-later-layer": [
        [symlink("evil", "../../../../")],
        [file("evil/pwned-layer", "x")],
    ],
    "hardlink-outside": [[hardlink("stolen", "../../../../secret.txt")]],
    "hardlink-absolute": [[hardlink("stolen", "/etc/passwd")]],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    data = tmp_path / "data"
    ref = image(tmp_path, HOSTILE[case], {"Cmd": ["/x"]}, name="hostile")
    before = all_files(tmp_path) - all_files(data) if data.exists() else all_files(tmp_path)
    s = store.ImageStore(data)
    with pytest.raises(unpack.HostileLayer, match="refused"):
        s.prepare(ref)
    after = {p for p in all_files(tmp_path) if not p.startswith("data")}
    assert after == before, f"files appeared outside the cache: {after - before}"
    assert not list((data / "rootfs").iterdir()), "a hostile image left a root filesystem"
    assert not list((data / "tmp").iterdir()), "a failed build left its work directory"


def test_absolute_path_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned-absolute"
    raw = layout.layer_tar([file(str(target), "x")])
    assert str(target).lstrip("/").encode() in raw  # the tar really holds that name
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(unpack.HostileLayer, match="absolute path"):
        unpack.Unpacker(root, unpack.Budget(unpack.Limits())).apply(io.BytesIO(raw), what="l")
    assert not target.exists()


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ref = image(tmp_path, [[file("zeros", b"\0" * (4 << 20))]], {"Cmd": ["/x"]})
    blob_sizes = [p.stat().st_size for p in (tmp_path / "img/blobs/sha256").iterdir()]
    assert max(blob_sizes) < 64 << 10  # 4 MiB of zeros is a tiny gzip
    s = store.ImageStore(data, store.StoreOptions(limits=unpack.Limits(max_image_bytes=1 << 20)))
    with pytest.raises(unpack.HostileLayer, match="expands past the limit"):
        s.prepare(ref)
    assert not list((data / "tmp").iterdir())
    assert s.stats.mkfs_runs == 0


def test_diff_id_mismatch_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    raw = layout.layer_tar([file("f", "x")])
    u = unpack.Unpacker(root, unpack.Budget(unpack.Limits()))
    with pytest.raises(ImageError, match="differs from diff_id"):
        u.apply(io.BytesIO(raw), what="l", diff_id="sha256:" + "0" * 64)


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack keeps owners only as root")
def test_same_tree_as_umoci(tmp_path: Path) -> None:
    layers = [
        [
            directory("etc"),
            file("etc/a", "1"),
            file("etc/b", "2", 0o600, 5, 6),
            directory("usr/lib"),
            symlink("lib", "usr/lib"),
            file("usr/lib/l.so", "so", 0o755),
            directory("d"),
            file("d/x", "x"),
            hardlink("etc/a-link", "etc/a"),
        ],
        [
            file("etc/.wh.b", ""),
            file("d/.wh..wh..opq", ""),
            file("d/y", "y"),
            file("lib/new.so", "n", 0o755),
        ],
    ]
    ref = image(tmp_path, layers, {"Cmd": ["/x"]})
    ours = tmp_path / "ours"
    ours.mkdir()
    apply_all(ours, layers)
    bundle = tmp_path / "bundle"
    layout_dir = ref.removeprefix("oci:")
    subprocess.run(
        ["umoci", "unpack", "--image", layout_dir, str(bundle)], check=True, capture_output=True
    )
    theirs = tree_listing(bundle / "rootfs")
    mine = tree_listing(ours)
    # umoci sets directory modes from the tar; we created implicit parents 0755 as it does
    assert mine == theirs
