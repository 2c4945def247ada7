"""The OCI image model: descriptors, manifests, indexes and image configs, parsed once.

Pure: JSON bytes in, frozen values out. Docker schema 2 media types are
accepted alongside the OCI ones (they are the same shapes). Also picks the
host's platform out of a multi-arch index.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import ImageError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform (``os``/``architecture``/``variant``)."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: what a blob is, its digest and stored size."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def annotation(self, key: str) -> str:
        return dict(self.annotations).get(key, "")


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: one config and the ordered layers (lowest first)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config that decide how the app runs and what its layers are."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    platform: Platform = field(default_factory=Platform)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ImageError(f"{what}: descriptor is not an object")
    try:
        media_type = str(raw.get("mediaType", ""))
        digest = str(raw["digest"])
        size = int(raw["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"{what}: descriptor lacks digest or size") from exc
    hexpart = digest[len("sha256:") :]
    well_formed = len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)
    if not digest.startswith("sha256:") or not well_formed or size < 0:
        raise ImageError(f"{what}: unsupported or malformed digest {digest!r}")
    plat = raw.get("platform")
    parsed_platform = None
    if isinstance(plat, dict):
        parsed_platform = Platform(
            os=str(plat.get("os", "")),
            architecture=str(plat.get("architecture", "")),
            variant=str(plat.get("variant", "")),
        )
    annotations = raw.get("annotations") or {}
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=parsed_platform,
        annotations=tuple(sorted((str(k), str(v)) for k, v in annotations.items())),
    )


def media_type_of(data: bytes) -> str:
    """The mediaType a manifest or index declares, guessed from its shape if absent."""
    doc = _load(data, "manifest")
    declared = str(doc.get("mediaType", ""))
    if declared:
        return declared
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def parse_index(data: bytes) -> tuple[Descriptor, ...]:
    doc = _load(data, "index")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError("index has no manifests list")
    return tuple(_descriptor(m, "index") for m in manifests)


def parse_manifest(data: bytes) -> Manifest:
    doc = _load(data, "manifest")
    layers = doc.get("layers")
    if "config" not in doc or not isinstance(layers, list):
        raise ImageError("manifest lacks config or layers")
    return Manifest(
        config=_descriptor(doc["config"], "manifest config"),
        layers=tuple(_descriptor(layer, "manifest layer") for layer in layers),
    )


def _strings(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ImageError("image config: expected a list of strings")
    return tuple(str(v) for v in value)


def parse_config(data: bytes) -> ImageConfig:
    doc = _load(data, "image config")
    cfg = doc.get("config") or {}
    rootfs = doc.get("rootfs") or {}
    return ImageConfig(
        entrypoint=_strings(cfg.get("Entrypoint")),
        cmd=_strings(cfg.get("Cmd")),
        env=_strings(cfg.get("Env")) or (),
        user=str(cfg.get("User") or ""),
        working_dir=str(cfg.get("WorkingDir") or ""),
        stop_signal=str(cfg.get("StopSignal") or ""),
        exposed_ports=tuple(sorted((cfg.get("ExposedPorts") or {}).keys())),
        diff_ids=_strings(rootfs.get("diff_ids")) or (),
        platform=Platform(
            os=str(doc.get("os", "linux")),
            architecture=str(doc.get("architecture", "amd64")),
            variant=str(doc.get("variant", "")),
        ),
    )


_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def host_platform() -> Platform:
    """The platform this host runs images for."""
    machine = platform.machine()
    return Platform(os="linux", architecture=_ARCH_ALIASES.get(machine, machine))


def pick_platform(entries: tuple[Descriptor, ...], want: Platform) -> Descriptor:
    """The index entry for ``want``; entries without a platform are taken as a fallback."""
    untagged = []
    for entry in entries:
        plat = entry.platform
        if plat is None:
            untagged.append(entry)
            continue
        same_arch = plat.os == want.os and plat.architecture == want.architecture
        if same_arch and (not want.variant or not plat.variant or plat.variant == want.variant):
            return entry
    if untagged:
        return untagged[0]
    offered = ", ".join(str(e.platform) for e in entries) or "nothing"
    raise ImageError(f"image has no manifest for {want} (offers {offered})")
