"""The image store: sources resolve to one digest, blobs are verified, builds happen once."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from fleet.errors import ImageError
from providers.images import layout, oci, samples, store
from tests.providers.images_util import image


def ext4_ls(img: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"ls -l {path}", str(img)], capture_output=True, text=True, check=True
    ).stdout


def ext4_cat(img: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(img)], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def web(tmp_path: Path) -> layout.ImageSpec:
    return samples.web_image()


def test_all_local_transports_build_a_bootable_root(tmp_path: Path, web: layout.ImageSpec) -> None:
    digest = layout.write_oci_layout(tmp_path / "lay", web, tag="v1")
    layout.write_oci_archive(tmp_path / "arch.tar", web, tag="v1")
    layout.write_docker_archive(tmp_path / "dock.tar", web)
    s = store.ImageStore(tmp_path / "data")
    a = s.prepare(f"oci:{tmp_path}/lay:v1")
    b = s.prepare(f"oci-archive:{tmp_path}/arch.tar:v1")
    c = s.prepare(f"docker-archive:{tmp_path}/dock.tar")
    assert a.manifest_digest == b.manifest_digest == digest
    assert a.rootfs == b.rootfs
    assert s.stats.mkfs_runs == 2  # the docker-archive has its own (uncompressed) manifest
    for prepared in (a, c):
        assert prepared.config.entrypoint == ("/bin/web",)
        assert "app:x:1001:1002" in prepared.passwd
        listing = ext4_ls(prepared.rootfs, "/bin")
        assert "busybox" in listing and "web" in listing
        assert "hello from a microVM" in ext4_cat(prepared.rootfs, "/www/index.html")
    home = ext4_ls(a.rootfs, "/home")
    assert " 1001 " in home and " 1002 " in home  # owner uid/gid kept in the filesystem


def test_second_machine_builds_nothing(tmp_path: Path, web: layout.ImageSpec) -> None:
    layout.write_oci_layout(tmp_path / "lay", web)
    calls: list[Path] = []

    def counting_mkfs(tree: Path, out: Path, size: int) -> None:
        calls.append(out)
        store.rootfs.run_mkfs_ext4(tree, out, size)

    first = store.ImageStore(tmp_path / "data", mkfs=counting_mkfs)
    first.prepare(f"oci:{tmp_path}/lay")
    assert (len(calls), first.stats.layers_unpacked) == (1, 2)
    again = store.ImageStore(tmp_path / "data", mkfs=counting_mkfs)  # a new process, same cache
    timings: dict[str, float] = {}
    prepared = again.prepare(f"oci:{tmp_path}/lay", timings)
    assert len(calls) == 1
    assert (again.stats.layers_unpacked, again.stats.mkfs_runs, again.stats.blobs_fetched) == (
        0,
        0,
        0,
    )
    assert again.stats.cache_hits == 1
    assert prepared.rootfs.exists()
    assert timings["build"] == 0.0


def test_concurrent_requests_build_once(tmp_path: Path, web: layout.ImageSpec) -> None:
    layout.write_oci_layout(tmp_path / "lay", web)
    s = store.ImageStore(tmp_path / "data")
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(s.prepare(f"oci:{tmp_path}/lay").manifest_digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1 and len(results) == 4
    assert s.stats.mkfs_runs == 1
    assert s.stats.layers_unpacked == 2


def test_corrupt_blob_caches_nothing_and_names_it(tmp_path: Path, web: layout.ImageSpec) -> None:
    layout.write_oci_layout(tmp_path / "lay", web)
    manifest_desc = json.loads((tmp_path / "lay/index.json").read_text())["manifests"][0]
    manifest = oci.parse_manifest(
        (tmp_path / "lay/blobs/sha256" / manifest_desc["digest"].split(":")[1]).read_bytes()
    )
    victim = manifest.layers[1]
    path = tmp_path / "lay/blobs/sha256" / victim.digest.split(":")[1]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    s = store.ImageStore(tmp_path / "data")
    with pytest.raises(ImageError, match=victim.digest) as info:
        s.prepare(f"oci:{tmp_path}/lay")
    assert "nothing cached" in str(info.value)
    assert not s.blobs.has(victim.digest)
    assert not list((tmp_path / "data/blobs/sha256").glob(".incoming-*"))
    assert not list((tmp_path / "data/rootfs").iterdir())


def test_multi_arch_layout_picks_host_platform(tmp_path: Path) -> None:
    amd = samples.report_image({"Cmd": ["/bin/report", "amd64"]})
    arm = samples.report_image({"Cmd": ["/bin/report", "arm64"]})
    arm.architecture = "arm64"
    lay = tmp_path / "multi"
    d_amd = layout.write_oci_layout(lay, amd, tag="amd")
    d_arm = layout.write_oci_layout(lay, arm, tag="arm")
    index_doc = json.loads((lay / "index.json").read_text())
    sizes = {m["digest"]: m["size"] for m in index_doc["manifests"]}
    nested = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": d_arm,
                    "size": sizes[d_arm],
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": d_amd,
                    "size": sizes[d_amd],
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
    ).encode()
    nested_digest = oci.sha256_digest(nested)
    (lay / "blobs/sha256" / nested_digest.split(":")[1]).write_bytes(nested)
    index_doc["manifests"].append(
        {
            "mediaType": oci.OCI_INDEX,
            "digest": nested_digest,
            "size": len(nested),
            "annotations": {oci.REF_NAME: "multi"},
        }
    )
    (lay / "index.json").write_text(json.dumps(index_doc))
    s = store.ImageStore(
        tmp_path / "data", store.StoreOptions(platform=oci.Platform("linux", "amd64"))
    )
    assert s.resolve(f"oci:{lay}:multi")[1].manifest_digest == d_amd
    s_arm = store.ImageStore(
        tmp_path / "data2", store.StoreOptions(platform=oci.Platform("linux", "arm64"))
    )
    assert s_arm.resolve(f"oci:{lay}:multi")[1].manifest_digest == d_arm
    with pytest.raises(ImageError, match="name one with :TAG"):
        s.resolve(f"oci:{lay}")


def test_unknown_tag_and_missing_layout(tmp_path: Path) -> None:
    ref = image(tmp_path, [[layout.file("a", "1")]])
    s = store.ImageStore(tmp_path / "data")
    with pytest.raises(ImageError, match="no image tagged 'nope'"):
        s.prepare(ref.replace(":latest", ":nope"))
    with pytest.raises(ImageError, match="not a directory"):
        s.prepare(f"oci:{tmp_path}/absent")
    with pytest.raises(ImageError, match="no such file"):
        s.prepare(f"docker-archive:{tmp_path}/absent.tar")
