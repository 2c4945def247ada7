"""The ``image`` kind: an image pulled, verified and built into a root filesystem here.

Creating it ahead of the machines that use it is what lets the planner order
"image ready -> machine started" and report a bad reference or a digest
mismatch on its own line. The digest each reference resolved to is kept in
``image-refs.json`` so that observe can say whether the image is still here.
Several applies may create images on one host at once (each request of the
agent's channel is its own process), so the index's read-modify-write holds
an flock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from hostagent import handlers as H
from hostagent import netlock
from providers.images import store

Json = Any


class ImageHandler:
    kind = "image"

    def __init__(self, images: store.ImageStore, data_dir: Path) -> None:
        self.images = images
        self.data_dir = data_dir
        self.index = data_dir / "image-refs.json"

    def _refs(self) -> dict[str, str]:
        try:
            raw = json.loads(self.index.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def _edit(self, ref: str, digest: str | None) -> None:
        """Set (or, with None, drop) one reference in the index, under its lock."""
        with netlock.held(self.data_dir, "image-refs.lock"):
            refs = self._refs()
            if digest is None:
                if refs.pop(ref, None) is None:
                    return
            else:
                refs[ref] = digest
            tmp = self.index.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(sorted(refs.items())), indent=1))
            os.replace(tmp, self.index)

    def create(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        ref = str(spec.get("ref", rid))
        emit("pulling", ref)
        prepared = self.images.prepare(ref)
        self._edit(ref, prepared.manifest_digest)
        emit("ready", f"{ref} is {prepared.manifest_digest}")

    def update(
        self, rid: str, old: Mapping[str, Json], spec: Mapping[str, Json], emit: H.Emit
    ) -> None:
        self.create(rid, spec, emit)

    def delete(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        # The layers and root filesystems stay cached (machines may still use
        # them); the reference is simply no longer wanted here.
        self._edit(rid, None)

    def start(self, rid: str, spec: Mapping[str, Json], emit: H.Emit) -> None:
        self.create(rid, spec, emit)

    def observe(self, rid: str, spec: Mapping[str, Json]) -> H.Observed:
        digest = self._refs().get(rid)
        if digest is None or self.images.get(digest, rid) is None:
            return H.Observed(state=None, runtime={"detail": "not built here"})
        return H.Observed(state="running", health="passing", actual={"digest": digest})

    def healthy(self, rid: str, spec: Mapping[str, Json]) -> bool:
        return self.observe(rid, spec).state == "running"

    def unmanaged(self, managed: Collection[str]) -> list[tuple[str, H.Observed]]:
        return []
