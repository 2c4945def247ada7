"""The agent's on-disk inventory: atomic, monotonic, serialised between processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from hostagent.inventory import Entry, Inventory


def test_empty_inventory_reads_as_generation_zero(tmp_path: Path) -> None:
    state = Inventory(tmp_path).read()
    assert state.generation == 0
    assert state.entries == {}


def test_changes_bump_the_generation_and_survive_reopening(tmp_path: Path) -> None:
    inv = Inventory(tmp_path)
    with inv.transaction() as state:
        state.put(Entry("machine", "web/ams#1", "sha256:aa", {"image": "x"}))
    with inv.transaction() as state:
        pass  # no change: no write, no new generation
    reopened = Inventory(tmp_path).read()
    assert reopened.generation == 1
    entry = reopened.get("machine", "web/ams#1")
    assert entry is not None and entry.etag == "sha256:aa"
    with inv.transaction() as state:
        state.remove("machine", "web/ams#1")
    assert Inventory(tmp_path).read().generation == 2


def test_a_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    inv = Inventory(tmp_path)
    with inv.transaction() as state:
        state.put(Entry("machine", "a", "e1", {}))
    before = inv.path.read_bytes()
    with pytest.raises(RuntimeError), inv.transaction() as state:
        state.put(Entry("machine", "b", "e2", {}))
        raise RuntimeError("crash in the middle")
    assert inv.path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".inventory.")]


def _bump(directory: str, times: int) -> None:
    inv = Inventory(directory)
    for _ in range(times):
        with inv.transaction() as state:
            entry = state.get("counter", "c") or Entry("counter", "c", "0", {"n": 0})
            entry.spec = {"n": entry.spec["n"] + 1}
            entry.etag = str(entry.spec["n"])
            state.put(entry)


def test_writers_in_two_processes_never_lose_an_update(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(str(tmp_path), 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    state = Inventory(tmp_path).read()
    entry = state.get("counter", "c")
    assert entry is not None and entry.spec["n"] == 80
    assert state.generation == 80
    assert json.loads(Inventory(tmp_path).path.read_text())["format_version"] == 1
