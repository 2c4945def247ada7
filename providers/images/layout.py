"""Writing OCI image layouts, OCI archives and docker-archive tarballs from plain files.

The project builds its own small images with this (tests, benchmarks, the
examples): a busybox-static root plus an app, with no Docker engine and no
registry. Output is deterministic: fixed mtimes, sorted entries, canonical JSON.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.images import oci

EPOCH = 1_700_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar entry of a layer: a file, directory, symlink or hardlink."""

    path: str
    kind: str = "file"  # file | dir | symlink | hardlink | fifo | chardev
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""


def file(path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(path, "file", raw, mode, uid, gid)


def directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, "symlink", mode=0o777, target=target)


def hardlink(path: str, target: str) -> Entry:
    return Entry(path, "hardlink", target=target)


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer tar holding ``entries`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, EPOCH
            payload = None
            if e.kind == "file":
                info.type, info.size, payload = tarfile.REGTYPE, len(e.data), io.BytesIO(e.data)
            elif e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif e.kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                raise ValueError(f"unknown entry kind {e.kind}")
            tar.addfile(info, payload)
    return buf.getvalue()


def busybox_entries(
    busybox: Path = Path("/bin/busybox"), applets: Iterable[str] = ()
) -> list[Entry]:
    """A minimal root: /bin/busybox (static) with hardlinked applets and the usual dirs."""
    entries = [directory(d) for d in ("bin", "etc", "tmp", "var", "root", "home", "usr")]
    entries.append(file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [hardlink(f"bin/{a}", "bin/busybox") for a in applets]
    return entries


@dataclass(slots=True)
class ImageSpec:
    """What goes into an image: layers (lowest first) and the runtime config."""

    layers: list[bytes]
    config: dict[str, Any] = field(default_factory=dict)
    architecture: str = "amd64"
    gzip_layers: bool = True


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _blobs(spec: ImageSpec) -> tuple[dict[str, bytes], bytes, bytes]:
    """(blobs by digest, manifest bytes, config bytes)."""
    blobs: dict[str, bytes] = {}
    layer_descs, diff_ids = [], []
    for raw in spec.layers:
        diff_ids.append(oci.sha256_digest(raw))
        stored = gzip.compress(raw, compresslevel=6, mtime=0) if spec.gzip_layers else raw
        digest = oci.sha256_digest(stored)
        blobs[digest] = stored
        media = oci.OCI_LAYER_GZIP if spec.gzip_layers else oci.OCI_LAYER
        layer_descs.append({"mediaType": media, "digest": digest, "size": len(stored)})
    config = _canonical(
        {
            "architecture": spec.architecture,
            "os": "linux",
            "config": spec.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "created": "2023-11-14T22:13:20Z",
        }
    )
    config_digest = oci.sha256_digest(config)
    blobs[config_digest] = config
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layer_descs,
        }
    )
    blobs[oci.sha256_digest(manifest)] = manifest
    return blobs, manifest, config


def write_oci_layout(dest: Path, spec: ImageSpec, tag: str = "latest") -> str:
    """Write (or add to) an OCI layout at ``dest``; returns the manifest digest."""
    blobs, manifest, _config = _blobs(spec)
    digest = oci.sha256_digest(manifest)
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for d, data in blobs.items():
        (dest / "blobs" / "sha256" / d.split(":", 1)[1]).write_bytes(data)
    index_path = dest / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    kept = [m for m in index["manifests"] if m.get("annotations", {}).get(oci.REF_NAME) != tag]
    entry = {
        "mediaType": oci.OCI_MANIFEST,
        "digest": digest,
        "size": len(manifest),
        "annotations": {oci.REF_NAME: tag},
    }
    index["manifests"] = [*kept, entry]
    index_path.write_bytes(_canonical(index))
    return digest


def _tar_dir(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                tar.add(full, arcname=str(full.relative_to(src)), recursive=False)


def write_oci_archive(dest: Path, spec: ImageSpec, tag: str = "latest") -> str:
    """An ``oci-archive:`` tarball (a tar of an OCI layout)."""
    staging = dest.with_name(dest.name + ".layout")
    digest = write_oci_layout(staging, spec, tag)
    _tar_dir(staging, dest)
    for p in sorted(staging.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    staging.rmdir()
    return digest


def write_docker_archive(dest: Path, spec: ImageSpec, repo_tag: str = "image:latest") -> None:
    """A ``docker save``-style tarball: manifest.json, config JSON and uncompressed layers."""
    plain = ImageSpec(spec.layers, spec.config, spec.architecture, gzip_layers=False)
    blobs, _manifest, config = _blobs(plain)
    config_hex = oci.sha256_digest(config).split(":", 1)[1]
    files: dict[str, bytes] = {f"{config_hex}.json": config}
    layer_names = []
    for raw in spec.layers:
        name = f"{oci.sha256_digest(raw).split(':', 1)[1]}/layer.tar"
        files[name] = raw
        layer_names.append(name)
    files["manifest.json"] = json.dumps(
        [{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": layer_names}]
    ).encode()
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    del blobs
