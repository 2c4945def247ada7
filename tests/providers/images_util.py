"""Helpers for the image tests: build small images and list what is under a directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from providers.images import layout


def tree_listing(root: Path) -> dict[str, tuple[str, int, int, int, str]]:
    """path -> (kind, mode, uid, gid, content hash or link target), for comparing trees."""
    out: dict[str, tuple[str, int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("symlink", 0, st.st_uid, st.st_gid, os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid, "")
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()[:16]
                out[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid, digest)
    return out


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def image(
    tmp: Path,
    layers: list[list[layout.Entry]],
    config: dict[str, object] | None = None,
    name: str = "img",
) -> str:
    """Write an OCI layout of ``layers`` under ``tmp``; returns its ``oci:`` reference."""
    spec = layout.ImageSpec([layout.layer_tar(entries) for entries in layers], config or {})
    layout.write_oci_layout(tmp / name, spec)
    return f"oci:{tmp / name}:latest"
