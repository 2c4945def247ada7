"""Build the golden plan cases' inputs: each case's fleet/ and observed.json.

Run by hand (``python tests/plans/build_cases.py [NAME...]``) when a case is
added or the observe format changes; the outputs are committed and reviewed.
Each case starts from the example fleet, applies a "before" fleet to
in-process hosts for real (so etags and instance ids are what an apply
produces), then changes the hosts (drift, unmanaged machines, unreachable
hosts) and/or the desired fleet. Expected plans are written by the golden
test itself with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fleet import compile as fleet_compile
from fleet import load as fleet_load
from providers import resources
from reconciler import apply
from reconciler.core import observed, planner
from reconciler.core import plan as P
from reconciler.hosts import memory
from reconciler.state import sqlite

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
Files = dict[str, list[dict[str, Any]]]


def read_fleet(path: Path) -> Files:
    out: Files = {}
    for f in sorted(path.rglob("*.yaml")):
        out[f.relative_to(path).as_posix()] = [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def write_fleet(files: Files, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    for rel, docs in files.items():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def doc(files: Files, kind: str, name: str) -> dict[str, Any]:
    for docs in files.values():
        for d in docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
    raise KeyError((kind, name))


def drop(files: Files, kind: str, name: str) -> None:
    for rel in list(files):
        files[rel] = [
            d for d in files[rel] if not (d["kind"] == kind and d["metadata"]["name"] == name)
        ]
        if not files[rel]:
            del files[rel]


def applied(files: Files) -> memory.MemoryFleet:
    """In-process hosts after applying ``files`` from empty, for real."""
    with tempfile.TemporaryDirectory() as tmp:
        write_fleet(files, Path(tmp) / "fleet")
        fleet = fleet_load.load_dir(Path(tmp) / "fleet")
        hosts = memory.MemoryFleet()
        hosts.add_fleet(fleet_compile.compile_world(fleet))
        plan = planner.make(fleet, hosts.observe_all(), origin=P.FleetRef(None, False))
        state = sqlite.SqliteBackend(str(Path(tmp) / "state.db"))
        report = apply.apply(plan, "build", clients=hosts.hosts.__getitem__, state=state)
        state.close()
        assert report.ok, apply.summary_lines(report)
    return hosts


def empty(files: Files) -> memory.MemoryFleet:
    with tempfile.TemporaryDirectory() as tmp:
        write_fleet(files, Path(tmp) / "fleet")
        fleet = fleet_load.load_dir(Path(tmp) / "fleet")
    hosts = memory.MemoryFleet()
    hosts.add_fleet(fleet_compile.compile_world(fleet))
    return hosts


def machine(
    hosts: memory.MemoryFleet, app: str, slot: str
) -> tuple[memory.MemoryHost, observed.Resource]:
    for h in hosts.hosts.values():
        for r in h.items.values():
            if (
                r.kind is resources.Kind.MACHINE
                and r.spec.get("app") == app
                and r.spec.get("slot") == slot
            ):
                return h, r
    raise KeyError((app, slot))


@dataclasses.dataclass
class Case:
    description: str
    fleet: Files
    hosts: memory.MemoryFleet
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    verbose: int = 0
    observed_override: dict[str, Any] | None = None


CASES: dict[str, Callable[[Files], Case]] = {}


def case(fn: Callable[[Files], Case]) -> Callable[[Files], Case]:
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


def image(files: Files, app: str, ref: str) -> None:
    doc(files, "App", app)["spec"]["image"] = ref


# ---------------------------------------------------------------- the cases


@case
def create_from_empty(base: Files) -> Case:
    return Case(
        "empty hosts: every machine, image, route and announcement is created", base, empty(base)
    )


@case
def noop(base: Files) -> Case:
    return Case(
        "the hosts already match the fleet: no changes, reasons with -v",
        base,
        applied(base),
        verbose=1,
    )


@case
def scale_up(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "App", "hello")["spec"]["regions"]["ams"] = 3
    return Case(
        "hello goes from 1 to 3 machines in ams: two creates, spread over hosts", new, hosts
    )


@case
def scale_down(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "App", "ledger")["spec"]["regions"]["ams"] = 1
    return Case("ledger goes from 2 to 1 machine: withdraw, route, then destroy", new, hosts)


@case
def image_rolling(base: Files) -> Case:
    before = copy.deepcopy(base)
    doc(before, "App", "hello")["spec"]["regions"] = {"ams": 3, "sea": 2}
    hosts = applied(before)
    new = copy.deepcopy(before)
    image(new, "hello", "192.0.2.2:5000/examples/hello:2.0")
    return Case(
        "image change of a 5-machine app: rolling, one machine per batch (max_surge 1)", new, hosts
    )


@case
def rolling_no_surge(base: Files) -> Case:
    before = copy.deepcopy(base)
    spec = doc(before, "App", "hello")["spec"]
    spec["regions"] = {"ams": 3, "sea": 3}
    spec["deploy"] = {"strategy": "rolling", "max_surge": 0, "max_unavailable": 0.34}
    hosts = applied(before)
    new = copy.deepcopy(before)
    image(new, "hello", "192.0.2.2:5000/examples/hello:2.0")
    return Case(
        "max_surge 0: destroy-before-create (-/+) in batches of floor(0.34 * 6) = 2", new, hosts
    )


@case
def canary(base: Files) -> Case:
    before = copy.deepcopy(base)
    doc(before, "App", "ledger")["spec"]["regions"]["ams"] = 3
    hosts = applied(before)
    new = copy.deepcopy(before)
    image(new, "ledger", "192.0.2.2:5000/examples/hello:2.0")
    return Case("ledger (strategy canary): one canary batch, then the rest roll", new, hosts)


@case
def bluegreen(base: Files) -> Case:
    before = copy.deepcopy(base)
    spec = doc(before, "App", "hello")["spec"]
    spec["regions"] = {"ams": 2, "sea": 1}
    spec["deploy"] = {"strategy": "bluegreen"}
    hosts = applied(before)
    new = copy.deepcopy(before)
    image(new, "hello", "192.0.2.2:5000/examples/hello:2.0")
    return Case("bluegreen: all green machines healthy before any blue one goes", new, hosts)


@case
def immediate(base: Files) -> Case:
    before = copy.deepcopy(base)
    doc(before, "App", "echo")["spec"]["deploy"] = {"strategy": "immediate"}
    hosts = applied(before)
    new = copy.deepcopy(before)
    image(new, "echo", "192.0.2.2:5000/examples/echo:1.1")
    return Case("immediate: everything at once, no health gate", new, hosts)


@case
def env_change_replaces(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "App", "hello")["spec"]["env"]["GREETING"] = "hi"
    return Case("an env change forces replacement (the env is baked in at boot)", new, hosts)


@case
def size_change_replaces(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "App", "echo")["spec"]["vm"]["memory"] = "256mb"
    return Case("a machine size change forces replacement", new, hosts)


@case
def in_place_update(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "App", "echo")["spec"]["restart"] = {"policy": "on-failure", "max_retries": 3}
    doc(new, "App", "echo")["spec"]["kill_timeout"] = "20s"
    return Case("restart policy and kill timeout update in place (~), no new machine", new, hosts)


@case
def drift_stopped(base: Files) -> Case:
    hosts = applied(base)
    h, r = machine(hosts, "hello", "ams#1")
    h.put(
        dataclasses.replace(
            r, status=observed.Status(observed.RunState.STOPPED, observed.Health.UNKNOWN)
        )
    )
    h, r = machine(hosts, "ledger", "ams#2")
    h.put(
        dataclasses.replace(
            r, status=observed.Status(observed.RunState.FAILED, observed.Health.CRITICAL)
        )
    )
    return Case(
        "drift: a machine stopped by hand and one that failed are started again", base, hosts
    )


@case
def drift_auto_stop(base: Files) -> Case:
    new = copy.deepcopy(base)
    doc(new, "App", "hello")["spec"]["services"][0]["auto_stop_machines"] = "stop"
    hosts = applied(new)
    h, r = machine(hosts, "hello", "sea#1")
    h.put(
        dataclasses.replace(
            r, status=observed.Status(observed.RunState.STOPPED, observed.Health.UNKNOWN)
        )
    )
    return Case(
        "a stopped machine of an auto-stop app is not drift: no-op with its reason",
        new,
        hosts,
        verbose=1,
    )


@case
def auto_stop_turned_off(base: Files) -> Case:
    before = copy.deepcopy(base)
    doc(before, "App", "hello")["spec"]["services"][0]["auto_stop_machines"] = "stop"
    hosts = applied(before)
    h, r = machine(hosts, "hello", "sea#1")
    h.put(
        dataclasses.replace(
            r, status=observed.Status(observed.RunState.STOPPED, observed.Health.UNKNOWN)
        )
    )
    return Case(
        "auto_stop turned off: the machine autostop stopped is updated in place, then started",
        base,
        hosts,
    )


@case
def route_drift(base: Files) -> Case:
    hosts = applied(base)
    h = hosts.hosts["ams-2"]
    r = h.items[(resources.Kind.ROUTE, "hello")]
    actual = copy.deepcopy(dict(r.spec))
    del actual["routes"]["be_hello_0"]["servers"]["ams.1"]  # someone removed it by hand
    actual["pid"] = 4242
    h.put(dataclasses.replace(r, actual=actual))
    return Case(
        "drift: the live proxy route lost its local server; the route is put back", base, hosts
    )


@case
def runtime_noise(base: Files) -> Case:
    hosts = applied(base)
    for h in hosts.hosts.values():
        for key, r in list(h.items.items()):
            runtime = {
                "pid": 31337,
                "uptime_s": 99999,
                "restarts": 2,
                "last_handshake": "2024-01-01T00:00:00Z",
            }
            actual = dict(r.spec) | {"pid": 7, "uptime_s": 5, "started_at": "2024-01-01T00:00:00Z"}
            h.items[key] = dataclasses.replace(
                r, status=dataclasses.replace(r.status, runtime=runtime), actual=actual
            )
    return Case("pids, uptime, handshake times differ everywhere: never diff noise", base, hosts)


@case
def unmanaged_resource(base: Files) -> Case:
    hosts = applied(base)
    spec = {
        "image": "debug:latest",
        "vm": {"cpus": 1, "memory_mb": 512, "cpu_kind": "shared", "gpus": None},
    }
    hosts.hosts["ams-1"].put(
        observed.Resource(
            resources.Kind.MACHINE,
            "debug-shell",
            "operator",
            "local:1",
            spec,
            observed.Status(observed.RunState.RUNNING),
        )
    )
    hosts.hosts["sea-1"].put(
        observed.Resource(
            resources.Kind.IMAGE, "debug:latest", "operator", "local:2", {"ref": "debug:latest"}
        )
    )
    return Case("resources not owned by the fleet are listed and never touched", base, hosts)


@case
def unreachable_host(base: Files) -> Case:
    hosts = applied(base)
    hosts.hosts[
        "sea-2"
    ].behaviour.unreachable = "ssh: connect to host 192.0.2.22 port 22: Connection timed out"
    new = copy.deepcopy(base)
    image(new, "hello", "192.0.2.2:5000/examples/hello:2.0")
    return Case(
        "sea-2 cannot be observed: its slots and resources are deferred, nothing guessed",
        new,
        hosts,
    )


@case
def cordoned_host_drained(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "Host", "ams-2")["spec"]["cordoned"] = True
    return Case(
        "ams-2 is cordoned: its machines move to ams-1 (+/-), its routes and announcements go",
        new,
        hosts,
    )


@case
def host_label_removed(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "Host", "ams-2")["metadata"]["labels"] = {}
    return Case("ams-2 loses disk=ssd: ledger's machine there moves, hello's stays", new, hosts)


@case
def region_removal_guard(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    for app in ("echo", "hello"):
        doc(new, "App", app)["spec"]["regions"].pop("sea")
    return Case("removing sea from two apps destroys 2 of 3 sea machines: refused", new, hosts)


@case
def region_removal_allowed(base: Files) -> Case:
    c = region_removal_guard(base)
    return Case(
        "the same, with --allow-mass-destroy", c.fleet, c.hosts, {"allow_mass_destroy": True}
    )


@case
def last_anycast_guard(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    drop(new, "App", "echo")
    return Case(
        "removing app echo would leave its anycast address with no announcer: refused", new, hosts
    )


@case
def app_removed(base: Files) -> Case:
    c = last_anycast_guard(base)
    return Case(
        "app echo removed with --allow-anycast-withdraw: withdraw, route, machine, image",
        c.fleet,
        c.hosts,
        {"allow_anycast_withdraw": True},
    )


@case
def anycast_change(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    doc(new, "App", "hello")["spec"]["anycast"]["ipv4"] = "198.51.100.11"
    return Case(
        "hello's anycast address changes: routes and announcements update in place", new, hosts
    )


@case
def gpu_shortage(base: Files) -> Case:
    hosts = empty(base)
    spec = {
        "image": "cuda-job",
        "vm": {
            "cpus": 2,
            "memory_mb": 1024,
            "cpu_kind": "performance",
            "gpus": {"model": "l4", "count": 1},
        },
    }
    hosts.hosts["sea-2"].put(
        observed.Resource(
            resources.Kind.MACHINE,
            "cuda-job",
            "operator",
            "local:1",
            spec,
            observed.Status(observed.RunState.RUNNING),
        )
    )
    return Case("an unmanaged job holds sea-2's only L4: infer cannot be placed", base, hosts)


@case
def gpu_fragmented(base: Files) -> Case:
    new = copy.deepcopy(base)
    doc(new, "Host", "sea-2")["spec"]["capacity"]["gpus"] = [{"model": "l4", "count": 2}]
    doc(new, "Host", "sea-1")["spec"]["capacity"]["gpus"] = [{"model": "l4", "count": 2}]
    doc(new, "Host", "sea-1")["metadata"]["labels"] = {"gpu": "l4"}
    spec = doc(new, "App", "infer")["spec"]
    spec["vm"]["gpus"]["count"] = 2
    spec["regions"]["sea"] = 2
    hosts = empty(new)
    spec_job = {
        "image": "cuda-job",
        "vm": {
            "cpus": 1,
            "memory_mb": 512,
            "cpu_kind": "shared",
            "gpus": {"model": "l4", "count": 1},
        },
    }
    hosts.hosts["sea-1"].put(
        observed.Resource(
            resources.Kind.MACHINE,
            "job",
            "operator",
            "local:1",
            spec_job,
            observed.Status(observed.RunState.RUNNING),
        )
    )
    return Case("3 of 4 L4s free in sea, but no host has 2 free for the second machine", new, hosts)


@case
def jurisdiction(base: Files) -> Case:
    new = copy.deepcopy(base)
    doc(new, "App", "ledger")["spec"]["regions"]["sea"] = 1
    return Case(
        "ledger is pinned to jurisdiction eu: a machine in sea (us) is rejected", new, empty(base)
    )


@case
def target(base: Files) -> Case:
    hosts = applied(base)
    new = copy.deepcopy(base)
    image(new, "hello", "192.0.2.2:5000/examples/hello:2.0")
    doc(new, "App", "echo")["spec"]["regions"]["ams"] = 2
    return Case(
        "--target app.echo: only echo's changes (and what they need)",
        new,
        hosts,
        {"targets": ["app.echo"]},
    )


@case
def exclude_host(base: Files) -> Case:
    c = target(base)
    return Case(
        "--exclude host.ams-2: nothing on ams-2, nor anything that depends on it",
        c.fleet,
        c.hosts,
        {"excludes": ["host.ams-2"]},
        verbose=1,
    )


@case
def duplicate_instance(base: Files) -> Case:
    hosts = applied(base)
    h, r = machine(hosts, "echo", "sea#1")
    h.put(dataclasses.replace(r, id=r.id + "-stray", etag="sha256:0000000000000000"))
    return Case(
        "a crashed manual run left a second instance of a slot: it is destroyed", base, hosts
    )


@case
def protocol_mismatch(base: Files) -> Case:
    hosts = applied(base)
    snap = observed.snapshot_to_json(hosts.observe_all())
    snap["hosts"][1]["protocol_version"] = 2
    return Case(
        "an agent speaking another protocol version is a clear error",
        base,
        hosts,
        observed_override=snap,
    )


def build(name: str) -> None:
    base = read_fleet(ROOT / "examples")
    c = CASES[name](copy.deepcopy(base))
    out = HERE / name
    out.mkdir(exist_ok=True)
    write_fleet(c.fleet, out / "fleet")
    snap = c.observed_override or observed.snapshot_to_json(c.hosts.observe_all())
    (out / "observed.json").write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    meta = {"description": c.description, "options": c.options, "verbose": c.verbose}
    (out / "case.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(CASES):
        build(name)
        print("built", name)
