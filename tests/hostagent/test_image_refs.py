"""The image kind's reference index survives concurrent applies on one host.

Each request of the agent's channel is its own process, so two applies may
create images at once; the lab once failed one with ENOENT on the shared
temporary file, and without a lock one of two writers' references is lost.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostagent.images import ImageHandler


@dataclass(frozen=True)
class _Prepared:
    manifest_digest: str


class _Store:
    """Only ``prepare`` is used by ``create``; what is tested is the index."""

    def prepare(self, ref: str) -> _Prepared:
        return _Prepared(f"sha256:{ref}")


def _create_many(data_dir: str, worker: int) -> None:
    handler = ImageHandler(_Store(), Path(data_dir))  # type: ignore[arg-type]
    for i in range(40):
        handler.create(f"r/{worker}-{i}", {}, lambda *_: None)


def test_concurrent_creates_keep_every_reference(tmp_path: Path) -> None:
    ctx: Any = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_create_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    refs = ImageHandler(_Store(), tmp_path)._refs()  # type: ignore[arg-type]
    assert len(refs) == 160
    assert refs["r/3-39"] == "sha256:r/3-39"
