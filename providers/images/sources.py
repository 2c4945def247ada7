"""Local image sources: OCI layout directories, OCI archives and docker-archive tarballs.

Each source resolves a reference to a manifest digest (following a tag and a
multi-arch index to the host's platform) and opens blobs by descriptor; the
cache verifies every byte it takes from here. A docker-archive has no manifest,
so one is synthesised in the OCI shape (canonical JSON, so its digest is stable).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fleet.errors import ImageError
from providers.images import oci
from providers.images.reference import ImageRef, Transport


@dataclass(frozen=True, slots=True)
class Resolved:
    """A reference resolved to one platform's manifest."""

    manifest_digest: str
    manifest_bytes: bytes
    manifest: oci.Manifest


class ImageSource(Protocol):
    """Something that can resolve a reference and hand out its blobs."""

    def resolve(self, want: oci.Platform) -> Resolved: ...

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO: ...

    def close(self) -> None: ...


class _Files(Protocol):
    def read(self, name: str) -> bytes: ...
    def open(self, name: str) -> BinaryIO: ...
    def exists(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def close(self) -> None: ...


class _DirFiles:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise ImageError(f"{root}: not a directory")
        self.root = root

    def _path(self, name: str) -> Path:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ImageError(f"{self.root}: refusing path {name!r}")
        return self.root.joinpath(*parts)

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except OSError as exc:
            raise ImageError(f"{self.root}: cannot read {name}: {exc.strerror}") from exc

    def open(self, name: str) -> BinaryIO:
        try:
            return self._path(name).open("rb")
        except OSError as exc:
            raise ImageError(f"{self.root}: cannot open {name}: {exc.strerror}") from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def close(self) -> None:
        pass


class _TarFiles:
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
            self.members = {
                os.path.normpath(m.name).lstrip("/"): m for m in self.tar.getmembers() if m.isreg()
            }
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(f"{path}: not a readable tar archive: {exc}") from exc
        self.path = path

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self.members.get(os.path.normpath(name))
        if member is None:
            raise ImageError(f"{self.path}: archive has no {name}")
        return member

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def open(self, name: str) -> BinaryIO:
        f = self.tar.extractfile(self._member(name))
        if f is None:
            raise ImageError(f"{self.path}: {name} is not a file")
        return f  # type: ignore[return-value]

    def exists(self, name: str) -> bool:
        return os.path.normpath(name) in self.members

    def size(self, name: str) -> int:
        return self._member(name).size

    def close(self) -> None:
        self.tar.close()


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


class OCILayoutSource:
    """An OCI image layout, as a directory (``oci:``) or a tar of one (``oci-archive:``)."""

    def __init__(self, files: _Files, tag: str, where: str) -> None:
        self.files = files
        self.tag = tag
        self.where = where

    def _verified(self, desc: oci.Descriptor, what: str) -> bytes:
        data = self.files.read(_blob_name(desc.digest))
        if oci.sha256_digest(data) != desc.digest:
            raise ImageError(f"{self.where}: {what} {desc.digest} does not match its digest")
        return data

    def resolve(self, want: oci.Platform) -> Resolved:
        if not self.files.exists("oci-layout"):
            raise ImageError(f"{self.where}: not an OCI layout (no oci-layout file)")
        entries = oci.parse_index(self.files.read("index.json"))
        if self.tag:
            tagged = tuple(e for e in entries if e.annotation(oci.REF_NAME) == self.tag)
            entries = tagged or tuple(e for e in entries if e.digest == self.tag)
            if not entries:
                raise ImageError(f"{self.where}: no image tagged {self.tag!r}")
        if not entries:
            raise ImageError(f"{self.where}: empty index")
        if len(entries) == 1:
            desc = entries[0]
        elif all(e.platform is not None for e in entries):
            desc = oci.pick_platform(entries, want)
        else:
            raise ImageError(f"{self.where}: holds {len(entries)} images; name one with :TAG")
        for _depth in range(4):
            if desc.media_type in oci.INDEX_TYPES:
                desc = oci.pick_platform(oci.parse_index(self._verified(desc, "index")), want)
                continue
            data = self._verified(desc, "manifest")
            if oci.media_type_of(data) in oci.INDEX_TYPES:
                desc = oci.pick_platform(oci.parse_index(data), want)
                continue
            return Resolved(desc.digest, data, oci.parse_manifest(data))
        raise ImageError(f"{self.where}: indexes nested too deeply")

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:
        return self.files.open(_blob_name(desc.digest))

    def close(self) -> None:
        self.files.close()


class DockerArchiveSource:
    """A ``docker save`` tarball: ``manifest.json`` plus config and layer files by path."""

    def __init__(self, files: _Files, where: str) -> None:
        self.files = files
        self.where = where
        self.paths: dict[str, str] = {}

    def resolve(self, want: oci.Platform) -> Resolved:
        try:
            entries = json.loads(self.files.read("manifest.json"))
            entry = entries[0]
            config_name = str(entry["Config"])
            layer_names = [str(n) for n in entry["Layers"]]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ImageError(f"{self.where}: malformed manifest.json") from exc
        if len(entries) != 1:
            raise ImageError(f"{self.where}: holds {len(entries)} images; only one is supported")
        config_bytes = self.files.read(config_name)
        config = oci.parse_config(config_bytes)
        if config.platform.architecture != want.architecture:
            raise ImageError(f"{self.where}: image is for {config.platform}, host is {want}")
        if len(config.diff_ids) != len(layer_names):
            raise ImageError(
                f"{self.where}: {len(layer_names)} layers but config lists "
                f"{len(config.diff_ids)} diff_ids"
            )
        config_digest = oci.sha256_digest(config_bytes)
        self.paths[config_digest] = config_name
        layers = []
        for name, diff_id in zip(layer_names, config.diff_ids, strict=True):
            with self.files.open(name) as f:
                magic = f.read(4)
            if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
                digest = oci.sha256_digest(self.files.read(name))  # compressed: hash it
                media = oci.OCI_LAYER_GZIP
            else:
                digest, media = diff_id, oci.OCI_LAYER  # verified against the bytes on fetch
            self.paths[digest] = name
            layers.append({"mediaType": media, "digest": digest, "size": self.files.size(name)})
        manifest_doc = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {
                "mediaType": oci.OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": layers,
        }
        data = json.dumps(manifest_doc, sort_keys=True, separators=(",", ":")).encode()
        return Resolved(oci.sha256_digest(data), data, oci.parse_manifest(data))

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:
        name = self.paths.get(desc.digest)
        if name is None:
            return io.BytesIO(b"")  # unknown blob: the cache's digest check names it
        return self.files.open(name)

    def close(self) -> None:
        self.files.close()


def open_local(ref: ImageRef) -> ImageSource:
    """The source for a local reference (``oci:``, ``oci-archive:``, ``docker-archive:``)."""
    path = Path(ref.path)
    where = str(ref)
    if ref.transport is Transport.OCI:
        return OCILayoutSource(_DirFiles(path), ref.tag, where)
    if not path.is_file():
        raise ImageError(f"{where}: no such file")
    if ref.transport is Transport.OCI_ARCHIVE:
        return OCILayoutSource(_TarFiles(path), ref.tag, where)
    if ref.transport is Transport.DOCKER_ARCHIVE:
        return DockerArchiveSource(_TarFiles(path), where)
    raise ImageError(f"{where}: not a local image reference")
