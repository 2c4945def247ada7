"""The image store: reference in, bootable read-only root filesystem out, built once per digest.

This is the facade the host agent and the hypervisor layer call. Layout under
the data directory::

    blobs/sha256/<hex>            verified blobs (manifests, configs, layers)
    rootfs/<hex>/rootfs.ext4      one read-only filesystem per manifest digest
    rootfs/<hex>/image.json       what the guest init needs (config, passwd, group)
    tmp/                          build trees; removed when a build ends
    locks/<hex>.lock              one builder per digest (processes and threads)

A second request for a built digest resolves the reference and returns: it
fetches, unpacks and formats nothing (:class:`BuildStats` counts each step so
tests can prove it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import ImageError
from providers.images import oci, reference, registry, rootfs, sources, unpack
from providers.images.cache import BlobStore

log = logging.getLogger(__name__)
ROOTFS_NAME = "rootfs.ext4"
META_NAME = "image.json"


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """A bootable image: its digest, read-only root filesystem and run configuration."""

    reference: str
    manifest_digest: str
    rootfs: Path
    fstype: str
    config: oci.ImageConfig
    passwd: str
    group: str
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class BuildStats:
    """Counts of the expensive steps, for tests and benchmarks (thread-safe increments)."""

    resolves: int = 0
    blobs_fetched: int = 0
    layers_unpacked: int = 0
    mkfs_runs: int = 0
    cache_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Tunables of an image store."""

    limits: unpack.Limits = field(default_factory=unpack.Limits)
    headroom_bytes: int = 1 << 30
    platform: oci.Platform = field(default_factory=oci.host_platform)
    registry_insecure: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")


class ImageStore:
    """Builds and caches root filesystems under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        options: StoreOptions | None = None,
        *,
        mkfs: rootfs.MkfsFn = rootfs.run_mkfs_ext4,
    ) -> None:
        self.data_dir = data_dir
        self.options = options or StoreOptions()
        self.blobs = BlobStore(data_dir / "blobs")
        self.rootfs_dir = data_dir / "rootfs"
        self.tmp_dir = data_dir / "tmp"
        self.lock_dir = data_dir / "locks"
        for d in (self.rootfs_dir, self.tmp_dir, self.lock_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.mkfs = mkfs
        self.stats = BuildStats()

    def open_source(self, ref: reference.ImageRef) -> sources.ImageSource:
        if ref.transport is reference.Transport.DOCKER:
            return registry.RegistrySource(ref, insecure_hosts=self.options.registry_insecure)
        return sources.open_local(ref)

    def resolve(self, ref_text: str) -> tuple[reference.ImageRef, sources.Resolved]:
        """The manifest digest a reference names now (no blob is fetched)."""
        ref = reference.parse(ref_text)
        source = self.open_source(ref)
        try:
            self.stats.bump("resolves")
            return ref, source.resolve(self.options.platform)
        finally:
            source.close()

    def prepare(self, ref_text: str, timings: dict[str, float] | None = None) -> PreparedImage:
        """Resolve ``ref_text`` and return its root filesystem, building it if needed.

        ``timings``, if given, gets the seconds spent in ``resolve`` and ``build``.
        """
        t0 = time.monotonic()
        ref = reference.parse(ref_text)
        source = self.open_source(ref)
        try:
            self.stats.bump("resolves")
            resolved = source.resolve(self.options.platform)
            t1 = time.monotonic()
            if timings is not None:
                timings["resolve"] = t1 - t0
                timings["build"] = 0.0
            hexpart = resolved.manifest_digest.split(":", 1)[1]
            done = self._load(ref_text, resolved.manifest_digest)
            if done is not None:
                self.stats.bump("cache_hits")
                return done
            with self._lock(hexpart):
                done = self._load(ref_text, resolved.manifest_digest)
                if done is not None:
                    self.stats.bump("cache_hits")
                    return done
                self._build(source, resolved, str(ref))
                if timings is not None:
                    timings["build"] = time.monotonic() - t1
        finally:
            source.close()
        done = self._load(ref_text, resolved.manifest_digest)
        assert done is not None
        return done

    def get(self, manifest_digest: str, ref_text: str = "") -> PreparedImage | None:
        """A built image by digest, without resolving anything."""
        return self._load(ref_text, manifest_digest)

    @contextmanager
    def _lock(self, hexpart: str) -> Iterator[None]:
        with open(self.lock_dir / f"{hexpart}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _load(self, ref_text: str, digest: str) -> PreparedImage | None:
        base = self.rootfs_dir / digest.split(":", 1)[1]
        meta_path = base / META_NAME
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        config = oci.parse_config(self.blobs.read(meta["config_digest"]))
        return PreparedImage(
            reference=ref_text,
            manifest_digest=digest,
            rootfs=base / ROOTFS_NAME,
            fstype="ext4",
            config=config,
            passwd=meta["passwd"],
            group=meta["group"],
            notes=tuple(meta.get("notes", ())),
        )

    def _fetch(self, source: sources.ImageSource, desc: oci.Descriptor, what: str) -> Path:
        path, fetched = self.blobs.ensure(
            desc.digest, desc.size, lambda: source.open_blob(desc), what=what
        )
        if fetched:
            self.stats.bump("blobs_fetched")
        return path

    def _build(self, source: sources.ImageSource, resolved: sources.Resolved, where: str) -> None:
        manifest = resolved.manifest
        self.blobs.put_bytes(resolved.manifest_digest, resolved.manifest_bytes, what="manifest")
        config_path = self._fetch(source, manifest.config, f"{where}: config")
        config = oci.parse_config(config_path.read_bytes())
        if config.diff_ids and len(config.diff_ids) != len(manifest.layers):
            raise ImageError(
                f"{where}: {len(manifest.layers)} layers but "
                f"{len(config.diff_ids)} diff_ids in the config"
            )
        layer_paths = [
            self._fetch(source, layer, f"{where}: layer {layer.digest}")
            for layer in manifest.layers
        ]
        hexpart = resolved.manifest_digest.split(":", 1)[1]
        work = Path(tempfile.mkdtemp(prefix=f"build-{hexpart[:12]}-", dir=self.tmp_dir))
        try:
            tree = work / "tree"
            tree.mkdir(mode=0o755)
            budget = unpack.Budget(self.options.limits)
            unpacker = unpack.Unpacker(tree, budget)
            for i, (layer, path) in enumerate(zip(manifest.layers, layer_paths, strict=True)):
                diff_id = config.diff_ids[i] if config.diff_ids else ""
                with open(path, "rb") as blob:
                    unpacker.apply(blob, what=f"{where}: layer {layer.digest}", diff_id=diff_id)
                self.stats.bump("layers_unpacked")
            for note in budget.notes:
                log.info("%s", note)
            passwd = rootfs.read_in_tree(tree, "/etc/passwd")
            group = rootfs.read_in_tree(tree, "/etc/group")
            image = work / ROOTFS_NAME
            size = rootfs.image_size(tree, self.options.headroom_bytes)
            self.mkfs(tree, image, size)
            self.stats.bump("mkfs_runs")
            shutil.rmtree(tree)
            meta = {
                "config_digest": manifest.config.digest,
                "passwd": passwd,
                "group": group,
                "notes": budget.notes[:200],
            }
            (work / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))
            dest = self.rootfs_dir / hexpart
            if dest.exists():
                shutil.rmtree(dest)
            work.rename(dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("built root filesystem for %s (%s)", where, resolved.manifest_digest)
