"""Field-level differences between two specs: the only module that imports deepdiff.

Pure. The rest of the reconciler sees our own :class:`DiffItem` values, each
with its path, before and after, and the effect the resource kind's rules give
it (update in place or replace). Callers compare etags first and only ask for
a field diff when the digests differ, so deepdiff runs on changed specs only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleet.errors import PlanError
from providers import resources
from reconciler import imports
from reconciler.core import observed


class _Missing:
    """Marks a side of a change where the field does not exist."""

    def __repr__(self) -> str:
        return "<absent>"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class DiffItem:
    path: tuple[str | int, ...]
    before: Any
    after: Any
    effect: resources.Effect

    @property
    def dotted(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out


def strip_runtime(value: Mapping[str, Any], rules: resources.Rules) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k not in rules.runtime_fields}


_SCALARS = (str, int, float, bool, type(None))
Path = tuple[str | int, ...]


def diff(
    before: Mapping[str, Any], after: Mapping[str, Any], kind: resources.Kind
) -> tuple[DiffItem, ...]:
    """Every changed leaf between ``before`` and ``after``, in path order.

    Most of a changed spec is unchanged (a new image leaves a machine's other
    dozen fields alone; a new ``hard_limit`` changes one number per server of a
    route): mappings are walked here, key by key, skipping values whose
    canonical JSON is equal and reporting scalars, type changes and keys on one
    side only directly; deepdiff walks only the lists that differ, so a change
    that touches no list does not even import it (~90 ms of a one-route
    apply). The items are exactly those deepdiff gives for the whole specs.
    """
    rules = resources.rules(kind)
    found: list[tuple[Path, Any, Any]] = []
    lists: list[tuple[Path, list[Any], list[Any]]] = []
    _walk((), before, after, found, lists)
    for path, old, new in lists:
        found += _deepdiff(path, old, new, kind)
    items = (DiffItem(path, old, new, rules.effect(path)) for path, old, new in found)
    return tuple(sorted(items, key=lambda i: [str(p) for p in i.path]))


def _walk(
    path: Path,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    found: list[tuple[Path, Any, Any]],
    lists: list[tuple[Path, list[Any], list[Any]]],
) -> None:
    for key in {**before, **after}:
        old = before.get(key, MISSING)
        new = after.get(key, MISSING)
        here = (*path, key)
        if old is MISSING or new is MISSING:
            found.append((here, old, new))
        elif type(old) in _SCALARS and type(new) in _SCALARS:
            if type(old) is not type(new) or old != new:
                found.append((here, old, new))
        elif type(old) is not type(new):  # deepdiff's type change: the whole values
            found.append((here, old, new))
        elif observed.canonical(old) == observed.canonical(new):
            continue
        elif isinstance(old, dict):
            _walk(here, old, new, found, lists)
        else:
            lists.append((here, old, new))


def _deepdiff(
    path: Path, before: list[Any], after: list[Any], kind: resources.Kind
) -> list[tuple[Path, Any, Any]]:
    # Imported here, not on top: ~60 ms that every `reconcile` command touching
    # plan types (observe, --help of plan) would pay, for a diff few runs need.
    # Without pydantic, which deepdiff imports (where installed) only to compare
    # pydantic models: about half of deepdiff's import time in a venv that has it.
    with imports.unimportable("pydantic"):
        import deepdiff  # noqa: PLC0415

    try:
        result = deepdiff.DeepDiff(before, after, view="tree", threshold_to_diff_deeper=0)
    except Exception as exc:  # deepdiff raises assorted types on odd input
        raise PlanError(f"cannot compare {kind} specs: {exc}") from exc
    return [
        (
            (*path, *level.path(output_format="list")),
            MISSING if _absent(level.t1) else level.t1,
            MISSING if _absent(level.t2) else level.t2,
        )
        for levels in result.values()
        for level in levels
    ]


def _absent(value: Any) -> bool:
    return type(value).__name__ == "NotPresent"


def forces_replace(items: tuple[DiffItem, ...]) -> bool:
    return any(i.effect is resources.Effect.REPLACE for i in items)
