"""``--target`` and ``--exclude``: cut a plan down, keeping its dependency closure. Pure.

Works on changes (a replacement's two steps go together). ``--target`` keeps
the matching changes plus everything they depend on, transitively (a batch
depends on the batch before it, a route on its machines), so a targeted plan
never runs a step before its prerequisites. ``--exclude`` drops the matching
changes plus everything that depends on them, transitively. Excludes win.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

from reconciler.core import address, rollout
from reconciler.core import plan as P


def select(
    works: Sequence[rollout.Work], targets: Sequence[str], excludes: Sequence[str]
) -> tuple[list[rollout.Work], list[rollout.Work]]:
    """Return (kept, left out), each in the original order."""
    if not targets and not excludes:
        return list(works), []
    owner: dict[str, int] = {}
    for i, w in enumerate(works):
        for s in w.steps:
            owner[s.id] = i
    needs: dict[int, set[int]] = defaultdict(set)
    needed_by: dict[int, set[int]] = defaultdict(set)
    for i, w in enumerate(works):
        for s in w.steps:
            for d in s.deps:
                j = owner.get(d)
                if j is not None and j != i:
                    needs[i].add(j)
                    needed_by[j].add(i)

    def hit(w: rollout.Work, selectors: Sequence[str]) -> bool:
        return any(address.matches(sel, w.change.address, w.change.hosts) for sel in selectors)

    keep = set(range(len(works)))
    if targets:
        keep = _closure({i for i, w in enumerate(works) if hit(w, targets)}, needs)
    if excludes:
        keep -= _closure({i for i, w in enumerate(works) if hit(w, excludes)}, needed_by)
    kept = [w for i, w in enumerate(works) if i in keep]
    ids = {s.id for w in kept for s in w.steps}
    for w in kept:  # with excludes, a kept step may still name a dropped batch as a dep
        w.steps = [_prune(s, ids) for s in w.steps]
    return kept, [w for i, w in enumerate(works) if i not in keep]


def _closure(start: set[int], edges: dict[int, set[int]]) -> set[int]:
    seen = set(start)
    todo = list(start)
    while todo:
        for j in edges.get(todo.pop(), ()):
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def _prune(step: P.Step, ids: set[str]) -> P.Step:
    return dataclasses.replace(step, deps=tuple(d for d in step.deps if d in ids))
