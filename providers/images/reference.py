"""Image references in the containers-transports syntax that skopeo and podman use.

Pure parsing: ``oci:PATH[:TAG]``, ``oci-archive:PATH[:TAG]``,
``docker-archive:PATH[:IGNORED]``, ``docker://HOST/REPO[:TAG|@DIGEST]`` and a
bare ``HOST/REPO[:TAG|@DIGEST]`` (which means ``docker://``). No I/O happens here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from fleet.errors import ImageError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
DEFAULT_REGISTRY = "registry-1.docker.io"


class Transport(StrEnum):
    """Where an image lives."""

    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DOCKER = "docker"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed image reference.

    For local transports ``path`` is set and ``tag`` optionally names an entry of
    the layout's index. For ``docker`` ``registry``/``repository`` are set and
    exactly one of ``tag`` and ``digest`` is (``latest`` by default).
    """

    transport: Transport
    path: str = ""
    registry: str = ""
    repository: str = ""
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            at = f"@{self.digest}" if self.digest else f":{self.tag}"
            return f"docker://{self.registry}/{self.repository}{at}"
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


def is_digest(value: str) -> bool:
    """True for a well-formed ``sha256:<64 hex>`` digest."""
    return bool(_DIGEST_RE.match(value))


def parse(text: str) -> ImageRef:
    """Parse ``text`` into an :class:`ImageRef` or raise :class:`ImageError`."""
    if not text or text != text.strip():
        raise ImageError(f"invalid image reference {text!r}: empty or padded with spaces")
    for transport in (Transport.OCI_ARCHIVE, Transport.OCI, Transport.DOCKER_ARCHIVE):
        prefix = f"{transport}:"
        if text.startswith(prefix):
            return _parse_local(transport, text[len(prefix) :], text)
    if text.startswith("docker://"):
        return _parse_docker(text[len("docker://") :], text)
    return _parse_docker(text, text)


def _parse_local(transport: Transport, rest: str, text: str) -> ImageRef:
    if not rest:
        raise ImageError(f"invalid image reference {text!r}: no path")
    path, tag = rest, ""
    # PATH[:TAG]: the tag is after the last colon, unless that colon is part of the path
    if ":" in rest:
        head, _, tail = rest.rpartition(":")
        if head and "/" not in tail:
            path, tag = head, tail
    if transport is Transport.DOCKER_ARCHIVE:
        tag = ""  # docker-archive's optional suffix names a RepoTag; we use the only image
    if tag and not _TAG_RE.match(tag) and not is_digest(tag):
        raise ImageError(f"invalid image reference {text!r}: bad tag {tag!r}")
    return ImageRef(transport=transport, path=path, tag=tag)


def _parse_docker(rest: str, text: str) -> ImageRef:
    name, digest, tag = rest, "", ""
    if "@" in name:
        name, _, digest = name.partition("@")
        if not is_digest(digest):
            raise ImageError(f"invalid image reference {text!r}: bad digest {digest!r}")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG_RE.match(tag):
            raise ImageError(f"invalid image reference {text!r}: bad tag {tag!r}")
    if digest and tag:
        tag = ""  # a digest pins the image; the tag is informational only
    if not digest and not tag:
        tag = "latest"
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = DEFAULT_REGISTRY, name
        if "/" not in repository:
            repository = f"library/{repository}"
    if not repository or not all(_REPO_COMPONENT_RE.match(c) for c in repository.split("/")):
        raise ImageError(f"invalid image reference {text!r}: bad repository {repository!r}")
    return ImageRef(
        transport=Transport.DOCKER,
        registry=registry,
        repository=repository,
        tag=tag,
        digest=digest,
    )
