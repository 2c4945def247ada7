"""Helpers shared by the core tests: fleets on disk, in-process hosts, plan + apply."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

from fleet import compile as fleet_compile
from fleet import load as fleet_load
from fleet import model
from reconciler import apply
from reconciler.core import plan as P
from reconciler.core import planner
from reconciler.hosts import memory
from reconciler.state import sqlite

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def fleet_dir(tmp: Path, edit: Any = None, name: str = "fleet") -> Path:
    """A copy of examples/ under ``tmp``; ``edit(docs)`` may change the App/Host documents."""
    dst = tmp / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(EXAMPLES, dst)
    if edit is not None:
        for f in sorted(dst.rglob("*.yaml")):
            docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
            before = copy.deepcopy(docs)
            for d in docs:
                edit(d)
            if docs != before:
                f.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return dst


def load(path: Path) -> model.Fleet:
    return fleet_load.load_dir(path)


def hosts_for(fleet: model.Fleet, path: Path | None = None) -> memory.MemoryFleet:
    hosts = memory.MemoryFleet(path)
    hosts.add_fleet(fleet_compile.compile_world(fleet))
    return hosts


def plan(fleet: model.Fleet, hosts: memory.MemoryFleet, **options: Any) -> P.Plan:
    return planner.make(
        fleet, hosts.observe_all(), origin=P.FleetRef(None, False), options=P.Options(**options)
    )


def run(
    p: P.Plan,
    hosts: memory.MemoryFleet,
    state: sqlite.SqliteBackend,
    apply_id: str = "test",
    **kw: Any,
) -> apply.Report:
    return apply.apply(p, apply_id, clients=hosts.hosts.__getitem__, state=state, **kw)


def app_edit(app: str, **changes: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        if d["kind"] == "App" and d["metadata"]["name"] == app:
            d["spec"].update(changes)

    return edit


def machines(hosts: memory.MemoryFleet) -> list[tuple[str, str, str, str]]:
    """(host, app, slot, image) of every machine, sorted."""
    out = []
    for name, h in hosts.hosts.items():
        for r in h.items.values():
            if r.kind == "machine":
                out.append(
                    (
                        name,
                        str(r.spec.get("app")),
                        str(r.spec.get("slot")),
                        str(r.spec.get("image")),
                    )
                )
    return sorted(out)
