"""Order the steps of a plan into a DAG: dependencies, rollout batches, health gates. Pure.

On the way up: image ready -> machine created and healthy (its gate) -> proxy
route -> BGP announcement, which also waits for its host's mesh and BIRD. On
the way down, the reverse: withdraw the announcement -> remove the route (or
the backend from it) -> delete the machine -> remove the image nobody uses.

Every host is an edge for every public app, so an app's route on *any* host
waits for the app's new machines on every host, and a machine that leaves for
good (scale-down, region removed) is deleted only after every host's route
has dropped it. A machine moving between hosts is deleted within its rollout
batch instead (routes waiting for all of the app's new machines cannot also
come before the first batch's deletes): the edges' health checks take it out
of service until the route update removes it.

Replacements of an app's machines follow its deploy strategy (fly.toml names):

* ``rolling`` (default): batches of ``max(1, floor(max_unavailable * N))``
  machines (N = the app's machine count). With ``max_surge > 0`` each batch is
  create-before-destroy (``+/-``) and at most ``max_surge`` machines wide, so
  no machine is ever unavailable and extra machines never exceed the surge;
  with ``max_surge: 0`` it is destroy-before-create (``-/+``).
* ``canary``: the first ``canary_count`` machines form a batch of their own,
  then the rest roll as above.
* ``bluegreen``: all new machines at once, all healthy before any old one goes.
* ``immediate``: all at once, no health gate.

That create-before-destroy holds for machines that move to another host. A
machine replaced on its own host keeps its slot's address, so the new VM cannot
run beside the old one: within its batch it is drained from every edge first
(the route steps :mod:`reconciler.core.drain` adds, marked with their batch),
then deleted, then created behind its gate (``-/+``); the next batch's drain
and finally each route's last step restore the drained servers.

Each batch waits for the previous one; a machine's create step carries a
health gate (healthy for ``min_healthy_time``, else fail at ``wait_timeout``).
If a gate fails, apply halts the app and, with ``auto_revert``, runs
:func:`revert_steps`, which are derived from the plan alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet import model
from providers import resources
from reconciler.core import plan as P

Kind = resources.Kind


@dataclass(slots=True)
class Work:
    """One change and its steps, while the DAG is being built."""

    change: P.Change
    steps: list[P.Step]


def batch_plan(app: model.App, count: int) -> tuple[list[int], bool]:
    """Batch sizes for ``count`` replacements of ``app`` and whether they create first."""
    d = app.deploy
    total = max(app.machine_count, count, 1)
    if d.strategy is model.Strategy.IMMEDIATE or d.strategy is model.Strategy.BLUEGREEN:
        return ([count] if count else []), True
    width = max(1, math.floor(d.max_unavailable * total))
    cbd = d.max_surge > 0
    if cbd:
        width = max(1, min(width, d.max_surge))
    sizes: list[int] = []
    left = count
    if d.strategy is model.Strategy.CANARY and left:
        first = min(max(d.canary_count, 1), left)
        sizes.append(first)
        left -= first
    while left > 0:
        sizes.append(min(width, left))
        left -= sizes[-1]
    return sizes, cbd


def batches(app: model.App, group: Sequence[Work]) -> list[list[Work]]:
    """``app``'s machine replacements in their rollout batches (by slot address)."""
    ordered = sorted(group, key=lambda w: w.change.address)
    sizes, _ = batch_plan(app, len(ordered))
    out: list[list[Work]] = []
    start = 0
    for size in sizes:
        out.append(ordered[start : start + size])
        start += size
    return out


def order(works: Sequence[Work], fleet: model.Fleet) -> tuple[list[Work], list[P.Rollout]]:
    """Fill in every step's dependencies and batch; return the works and each app's rollout."""
    deps: dict[str, set[str]] = defaultdict(set)
    batch_of: dict[str, int] = {}
    image_create: dict[tuple[str, str], str] = {}
    image_delete: dict[tuple[str, str], str] = {}
    route_put: dict[tuple[str, str], str] = {}
    route_delete: dict[tuple[str, str], str] = {}
    ann_put: dict[tuple[str, str], str] = {}
    ann_delete: dict[tuple[str, str], str] = {}
    ups: dict[tuple[str, str], list[str]] = defaultdict(list)  # machine steps bringing capacity
    app_ups: dict[str, list[str]] = defaultdict(list)  # the same, per app over all hosts
    app_route_puts: dict[str, list[str]] = defaultdict(list)
    app_route_steps: dict[str, list[str]] = defaultdict(list)  # puts and deletes
    leaving: set[str] = set()  # deletes of machines whose slot is gone for good
    deletes_on: dict[str, list[str]] = defaultdict(list)
    replaces: dict[str, list[Work]] = defaultdict(list)
    drains: dict[tuple[str, int], list[str]] = defaultdict(list)  # (app, batch) -> drain steps
    in_place_creates: dict[str, list[str]] = defaultdict(list)
    drained: set[str] = set()  # routes with drain steps
    host_net: dict[str, list[str]] = defaultdict(list)  # a host's mesh and BIRD being made
    host_bird: dict[str, list[str]] = defaultdict(list)  # a host's BIRD spec being put

    for w in works:
        c = w.change
        if c.kind is Kind.ROUTE and len(w.steps) > 1:  # a drained route's steps run in order
            drained.add(c.address)
        if len(w.steps) > 1 and (c.kind is Kind.ROUTE or c.action is P.Action.UPDATE):
            # in order: a drained route's steps; a stopped machine's update, then its start
            for before, after in zip(w.steps, w.steps[1:], strict=False):
                deps[after.id].add(before.id)
        for s in w.steps:
            key = (s.host, s.app or "")
            if s.kind is Kind.IMAGE:
                (image_create if s.verb is P.Verb.CREATE else image_delete)[
                    (s.host, s.resource_id)
                ] = s.id
            elif s.kind is Kind.ROUTE and s.batch is not None:  # drain (reconciler.core.drain)
                drains[(s.app or "", s.batch)].append(s.id)
                app_route_steps[s.app or ""].append(s.id)
                batch_of[s.id] = s.batch
            elif s.kind is Kind.ROUTE:
                (route_delete if s.verb is P.Verb.DELETE else route_put)[key] = s.id
                app_route_steps[s.app or ""].append(s.id)
                if s.verb is not P.Verb.DELETE:
                    app_route_puts[s.app or ""].append(s.id)
            elif s.kind is Kind.ANNOUNCEMENT:
                (ann_delete if s.verb is P.Verb.DELETE else ann_put)[key] = s.id
            elif s.kind in (Kind.WIREGUARD, Kind.BGP):
                # host-level: they wait for nothing; only the host's announcements wait for them
                if s.verb is not P.Verb.DELETE:
                    host_net[s.host].append(s.id)
                    if s.kind is Kind.BGP:
                        host_bird[s.host].append(s.id)
                continue
            elif s.verb is P.Verb.DELETE:
                deletes_on[s.host].append(s.id)
                if c.action is P.Action.DESTROY:
                    leaving.add(s.id)
            elif s.verb in (P.Verb.CREATE, P.Verb.START) and (
                c.action is not P.Action.REPLACE or c.from_host
            ):
                ups[key].append(s.id)  # it changes the host's set of backends
                app_ups[s.app or ""].append(s.id)
        if c.kind is Kind.MACHINE and c.action is P.Action.REPLACE and c.app:
            replaces[c.app].append(w)
            if not c.from_host:
                in_place_creates[c.app] += [s.id for s in w.steps if s.verb is P.Verb.CREATE]

    for w in works:
        for s in w.steps:
            key = (s.host, s.app or "")
            d = deps[s.id]
            if s.kind is Kind.MACHINE and s.verb is P.Verb.CREATE and s.spec is not None:
                d.update(_some(image_create.get((s.host, str(s.spec.get("image"))))))
            elif s.kind is Kind.MACHINE and s.verb is P.Verb.DELETE:
                d.update(_some(ann_delete.get(key), route_delete.get(key)))
                if s.id in leaving:
                    d.update(app_route_steps[s.app or ""])
            elif s.kind is Kind.ROUTE and s.batch is not None:
                continue  # a drain: it waits for the batch before it (below)
            elif s.kind is Kind.ROUTE and s.verb is not P.Verb.DELETE:
                d.update(app_ups[s.app or ""])
                if s.address in drained:  # its last step restores what was drained
                    d.update(in_place_creates[s.app or ""])
            elif s.kind is Kind.ROUTE:
                d.update(_some(ann_delete.get(key)))
            elif s.kind is Kind.ANNOUNCEMENT and s.verb is P.Verb.DELETE:
                # A cordon puts `withdraw_all` in the host's BIRD spec (reconciler.core.hostnet):
                # every graceful shutdown there starts with that step, not one per free slot
                d.update(host_bird[s.host])
            elif s.kind is Kind.ANNOUNCEMENT and s.verb is not P.Verb.DELETE:
                d.update(ups[key])
                d.update(_some(route_put.get(key)))
                # The edge announces it only with BIRD running and, for remote machines,
                # the mesh up to see them UP: made first, the announcement is exported as
                # soon as its hold-down allows (the apply waits for that, reconciler.settle)
                d.update(host_net[s.host])
            elif s.kind is Kind.IMAGE and s.verb is P.Verb.DELETE:
                d.update(deletes_on[s.host])

    rollouts: list[P.Rollout] = []
    for app_name in sorted(replaces):
        app = fleet.apps[app_name]
        groups = batches(app, replaces[app_name])
        _, cbd = batch_plan(app, len(replaces[app_name]))
        moves = any(w.change.from_host for w in replaces[app_name])
        rollouts.append(
            P.Rollout(
                app_name,
                app.deploy.strategy.value,
                len(groups),
                cbd and moves,
                app.deploy.auto_revert,
            )
        )
        previous: list[str] = []
        for number, members in enumerate(groups, 1):
            moved = [w for w in members if w.change.from_host]
            creates = [s.id for w in moved for s in w.steps if s.verb is P.Verb.CREATE]
            deletes = [s.id for w in moved for s in w.steps if s.verb is P.Verb.DELETE]
            first, second = (creates, deletes) if cbd else (deletes, creates)
            for sid in first:
                deps[sid].update(previous)
            for sid in second:
                deps[sid].update(first)
            for w in members:
                if w.change.from_host:
                    mode = (
                        P.ReplaceMode.CREATE_BEFORE_DESTROY
                        if cbd
                        else P.ReplaceMode.DESTROY_BEFORE_CREATE
                    )
                else:
                    # Same host, same address: drained from every edge, then the old
                    # VM goes before the new one boots (reconciler.core.drain).
                    mode = P.ReplaceMode.DESTROY_BEFORE_CREATE
                    w.steps.sort(key=lambda s: s.verb is P.Verb.CREATE)
                    old, new = w.steps[0].id, w.steps[-1].id
                    deps[old].update(previous, drains[(app_name, number)])
                    deps[new].add(old)
                    creates.append(new)
                    deletes.append(old)
                w.change = dataclasses.replace(w.change, replace_mode=mode)
            for sid in creates + deletes:
                batch_of[sid] = number
            for sid in drains[(app_name, number)]:
                deps[sid].update(previous)
            previous = creates + deletes

    out = []
    for w in works:
        steps = [
            dataclasses.replace(
                s, deps=tuple(sorted(deps[s.id] - {s.id})), batch=batch_of.get(s.id)
            )
            for s in w.steps
        ]
        out.append(Work(w.change, steps))
    _check_acyclic(out)
    return out, rollouts


def _some(*ids: str | None) -> list[str]:
    return [i for i in ids if i]


def _check_acyclic(works: Iterable[Work]) -> None:
    """Kahn's algorithm; a cycle is a planner bug, so it is an assertion."""
    steps = [s for w in works for s in w.steps]
    known = {s.id for s in steps}
    indeg = {s.id: sum(1 for d in s.deps if d in known) for s in steps}
    users: dict[str, list[str]] = defaultdict(list)
    for s in steps:
        for d in s.deps:
            users[d].append(s.id)
    ready = [sid for sid, n in indeg.items() if n == 0]
    seen = 0
    while ready:
        sid = ready.pop()
        seen += 1
        for u in users[sid]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    assert seen == len(steps), "plan steps form a cycle"


def revert_steps(plan: P.Plan, app: str, done: Iterable[str]) -> list[P.Step]:
    """Steps that undo the machine steps of ``app`` already done, newest first.

    A created instance is deleted; a deleted instance is created again with the
    spec and etag it had (the change's ``before``). Then every route that was
    drained for an in-place replacement gets the spec it had back (the old
    instance serves again). Derived from the plan only.
    """
    finished = set(done)
    changes = {c.address: c for c in plan.changes}
    out: list[P.Step] = []
    restores: dict[str, P.Step] = {}
    for s in reversed(plan.steps):
        if s.app != app or s.id not in finished:
            continue
        if s.kind is Kind.ROUTE and s.batch is not None and s.address not in restores:
            restores[s.address] = _restore(s, plan, changes.get(s.address))
            continue
        if s.kind is not Kind.MACHINE:
            continue
        rid = f"{s.id}:revert"
        if s.verb is P.Verb.CREATE:
            out.append(
                P.Step(
                    rid,
                    s.address,
                    s.host,
                    s.kind,
                    s.resource_id,
                    P.Verb.DELETE,
                    None,
                    None,
                    s.etag,
                    app=app,
                )
            )
        elif s.verb is P.Verb.DELETE and s.expect is not None:
            before = changes[s.address].before if s.address in changes else None
            if before is not None:
                out.append(
                    P.Step(
                        rid,
                        s.address,
                        s.host,
                        s.kind,
                        s.resource_id,
                        P.Verb.CREATE,
                        before,
                        s.expect,
                        None,
                        app=app,
                    )
                )
    return out + [r for r in restores.values() if r.spec is not None]


def _restore(last: P.Step, plan: P.Plan, change: P.Change | None) -> P.Step:
    """Put a drained route back as it was: from its last drain done to its first ``expect``."""
    first = next(s for s in plan.steps if s.address == last.address)
    before = change.before if change is not None and not change.drift else None
    return P.Step(
        f"{last.id}:revert",
        last.address,
        last.host,
        last.kind,
        last.resource_id,
        P.Verb.UPDATE,
        before,
        first.expect,
        last.etag,
        app=last.app,
    )
