"""Image references (containers-transports syntax) and the OCI model: pure parsing."""

from __future__ import annotations

import json

import pytest

from fleet.errors import ImageError
from providers.images import oci, reference
from providers.images.reference import Transport

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/srv/img", (Transport.OCI, "/srv/img", "", "", "", "")),
        ("oci:/srv/img:v1", (Transport.OCI, "/srv/img", "", "", "v1", "")),
        ("oci:relative/dir:latest", (Transport.OCI, "relative/dir", "", "", "latest", "")),
        ("oci-archive:/x/a.tar:web", (Transport.OCI_ARCHIVE, "/x/a.tar", "", "", "web", "")),
        ("docker-archive:/x/d.tar", (Transport.DOCKER_ARCHIVE, "/x/d.tar", "", "", "", "")),
        (
            "docker-archive:/x/d.tar:img:1",
            (Transport.DOCKER_ARCHIVE, "/x/d.tar:img", "", "", "", ""),
        ),
        (
            "docker://127.0.0.1:5000/app/web:1.2",
            (Transport.DOCKER, "", "127.0.0.1:5000", "app/web", "1.2", ""),
        ),
        (f"docker://localhost/web@{D}", (Transport.DOCKER, "", "localhost", "web", "", D)),
        (
            "registry.example/team/web",
            (Transport.DOCKER, "", "registry.example", "team/web", "latest", ""),
        ),
        (
            "busybox",
            (Transport.DOCKER, "", reference.DEFAULT_REGISTRY, "library/busybox", "latest", ""),
        ),
        (f"docker://r.example/a:tag@{D}", (Transport.DOCKER, "", "r.example", "a", "", D)),
    ],
)
def test_parse(text: str, expected: tuple[str, ...]) -> None:
    ref = reference.parse(text)
    assert (ref.transport, ref.path, ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " oci:/x",
        "oci:",
        "docker://r.example/UPPER:1",
        "docker://r.example/a@sha256:12",
        "r.example/a:bad tag",
        "r.example/a:-x",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ImageError):
        reference.parse(text)


def test_str_round_trips() -> None:
    for text in ("oci:/a/b:v1", "docker://127.0.0.1:5000/web:1", f"docker://h.example/w@{D}"):
        assert str(reference.parse(text)) == text


HEX = {"amd64": "a", "arm64": "b", "s390x": "c"}


def _desc(arch: str, variant: str = "") -> dict[str, object]:
    plat = {"os": "linux", "architecture": arch} | ({"variant": variant} if variant else {})
    return {
        "mediaType": oci.OCI_MANIFEST,
        "digest": "sha256:" + HEX[arch] * 64,
        "size": 1,
        "platform": plat,
    }


def test_pick_platform_from_index() -> None:
    index = json.dumps({"manifests": [_desc("arm64", "v8"), _desc("amd64"), _desc("s390x")]})
    entries = oci.parse_index(index.encode())
    assert oci.pick_platform(entries, oci.Platform("linux", "amd64")).digest == "sha256:" + "a" * 64
    assert oci.pick_platform(
        entries, oci.Platform("linux", "arm64", "v8")
    ).platform == oci.Platform("linux", "arm64", "v8")
    with pytest.raises(ImageError, match="no manifest for linux/riscv64"):
        oci.pick_platform(entries, oci.Platform("linux", "riscv64"))


def test_config_parsing_keeps_null_vs_empty() -> None:
    cfg = oci.parse_config(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Entrypoint": ["/ep"],
                    "Cmd": None,
                    "Env": ["A=1"],
                    "User": "1000:1000",
                    "WorkingDir": "/srv",
                },
                "rootfs": {"type": "layers", "diff_ids": [D]},
            }
        ).encode()
    )
    assert cfg.entrypoint == ("/ep",)
    assert cfg.cmd is None
    assert cfg.env == ("A=1",)
    assert (cfg.user, cfg.working_dir, cfg.diff_ids) == ("1000:1000", "/srv", (D,))


def test_bad_descriptor_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        oci.parse_manifest(b'{"config": {"digest": "md5:x", "size": 1}, "layers": []}')
    with pytest.raises(ImageError):
        oci.parse_manifest(b"[1, 2]")
    not_hex = '{"config": {"digest": "sha256:' + "g" * 64 + '", "size": 1}, "layers": []}'
    with pytest.raises(ImageError, match="malformed digest"):
        oci.parse_manifest(not_hex.encode())
