"""The registry source against a real local registry with token auth (docker-registry)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.errors import ImageError
from providers.images import layout, oci, registry, samples, store
from tests.providers.registry_util import Registry, local_registry, push

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("docker-registry") is None or shutil.which("skopeo") is None,
        reason="docker-registry and skopeo are installed by scripts/setup",
    ),
]


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with local_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


def test_auth_is_really_required(reg: Registry) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=5)
    info.value.close()
    assert info.value.code == 401
    scheme, params = registry.parse_challenge(info.value.headers["WWW-Authenticate"])
    assert scheme == "bearer" and params["service"] == "fleet-test-registry"


def test_pull_by_tag_and_by_digest(reg: Registry, tmp_path: Path) -> None:
    digest = layout.write_oci_layout(tmp_path / "web", samples.web_image(), tag="v1")
    push(f"oci:{tmp_path}/web:v1", reg, "apps/web:v1")
    before = len(reg.tokens.requests)
    s = store.ImageStore(tmp_path / "data")
    by_tag = s.prepare(f"docker://{reg.host}/apps/web:v1")
    assert len(reg.tokens.requests) > before, "the bearer token dance did not happen"
    assert by_tag.manifest_digest == digest  # skopeo kept the manifest bytes
    assert by_tag.config.entrypoint == ("/bin/web",)
    assert s.stats.mkfs_runs == 1
    # a bare HOST/REPO:TAG means docker://, and a pinned digest resolves to the same build
    pinned = s.prepare(f"{reg.host}/apps/web@{digest}")
    assert pinned.rootfs == by_tag.rootfs and s.stats.mkfs_runs == 1
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ImageError, match="not found"):
        s.prepare(f"docker://{reg.host}/apps/web@{wrong}")
    with pytest.raises(ImageError, match="not found"):
        s.prepare(f"docker://{reg.host}/apps/absent:v1")


def test_multi_arch_index_from_registry(reg: Registry, tmp_path: Path) -> None:
    amd = samples.report_image({"Cmd": ["/bin/report", "amd64"]})
    arm = samples.report_image({"Cmd": ["/bin/report", "arm64"]})
    arm.architecture = "arm64"
    lay = tmp_path / "multi"
    d_amd = layout.write_oci_layout(lay, amd, tag="amd")
    d_arm = layout.write_oci_layout(lay, arm, tag="arm")
    doc = json.loads((lay / "index.json").read_text())
    sizes = {m["digest"]: m["size"] for m in doc["manifests"]}
    nested = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": d,
                    "size": sizes[d],
                    "platform": {"os": "linux", "architecture": arch},
                }
                for d, arch in ((d_arm, "arm64"), (d_amd, "amd64"))
            ],
        }
    ).encode()
    nd = oci.sha256_digest(nested)
    (lay / "blobs/sha256" / nd.split(":")[1]).write_bytes(nested)
    doc["manifests"].append(
        {
            "mediaType": oci.OCI_INDEX,
            "digest": nd,
            "size": len(nested),
            "annotations": {oci.REF_NAME: "multi"},
        }
    )
    (lay / "index.json").write_text(json.dumps(doc))
    push(f"oci:{lay}:multi", reg, "apps/multi:1", all_images=True)
    amd_store = store.ImageStore(tmp_path / "d1", store.StoreOptions(platform=oci.Platform()))
    assert amd_store.resolve(f"docker://{reg.host}/apps/multi:1")[1].manifest_digest == d_amd
    arm_opts = store.StoreOptions(platform=oci.Platform("linux", "arm64"))
    arm_store = store.ImageStore(tmp_path / "d2", arm_opts)
    assert arm_store.resolve(f"docker://{reg.host}/apps/multi:1")[1].manifest_digest == d_arm
    built = amd_store.prepare(f"docker://{reg.host}/apps/multi:1")
    assert built.config.cmd == ("/bin/report", "amd64")


def test_token_realm_must_be_http() -> None:
    src = registry.RegistrySource(store.reference.parse("docker://127.0.0.1:1/x:1"))

    class FakeErr:
        headers = {"WWW-Authenticate": 'Bearer realm="file:///etc/passwd",service="x"'}

    with pytest.raises(ImageError, match="not http"):
        src._authenticate(FakeErr())  # type: ignore[arg-type]


def test_redirect_to_another_host_drops_the_token(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: dict[str, str | None] = {}

    class Storage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["storage"] = self.headers.get("Authorization")
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"blob")

        def log_message(self, *args: object) -> None:
            pass

    storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)

    class Front(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["front"] = self.headers.get("Authorization")
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{storage.server_address[1]}/b")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    for srv in (storage, front):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ref = store.reference.parse(f"docker://127.0.0.1:{front.server_address[1]}/x:1")
        src = registry.RegistrySource(ref, insecure_hosts=("127.0.0.1",))
        src.token = "secret-token"
        desc = oci.Descriptor(oci.OCI_LAYER, "sha256:" + "1" * 64, 4)
        with src.open_blob(desc) as blob:
            assert blob.read() == b"blob"
        assert seen == {"front": "Bearer secret-token", "storage": None}
    finally:
        for srv in (storage, front):
            srv.shutdown()
            srv.server_close()
