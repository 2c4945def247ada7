"""The plan: typed changes (what and why) and the DAG of steps that carries them out.

Pure data. A :class:`Change` is what an operator reviews: one address, one
action (``create``, ``update``, ``replace``, ``destroy``, ``start``), before and
after, the field diff and the reason. A :class:`Step` is what apply executes
and the host agent receives: one verb on one resource of one host, with the
etag it expects to find (``expect``; ``None`` = must not exist yet), the etag
the resource will carry afterwards, its dependencies and an optional health
gate. A replacement is two steps (create the new instance, delete the old)
whose order is the rollout's ``create_before_destroy`` choice.

Apply executes exactly ``Plan.steps``; nothing is recomputed at apply time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from providers import resources
from reconciler.core import diff, frozen

FORMAT_VERSION = 1


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DESTROY = "destroy"
    START = "start"  # drift correction: a machine that should run does not


class Verb(StrEnum):
    """What a step asks the agent to do to one resource."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    START = "start"


class ReplaceMode(StrEnum):
    CREATE_BEFORE_DESTROY = "create_before_destroy"  # symbol +/-
    DESTROY_BEFORE_CREATE = "destroy_before_create"  # symbol -/+


SYMBOLS = {
    Action.CREATE: "+",
    Action.DESTROY: "-",
    Action.UPDATE: "~",
    Action.START: "~",
    ReplaceMode.CREATE_BEFORE_DESTROY: "+/-",
    ReplaceMode.DESTROY_BEFORE_CREATE: "-/+",
}


@dataclass(frozen=True, slots=True)
class Gate:
    """Wait until the machine is healthy for ``min_healthy_s``; fail after ``deadline_s``."""

    min_healthy_s: float
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Change:
    address: str
    kind: resources.Kind
    action: Action
    reason: str
    host: str | None = None  # where it ends up (or where it is, for destroy)
    from_host: str | None = None  # where the old instance runs, when it moves
    app: str | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    diff: tuple[diff.DiffItem, ...] = ()
    replace_mode: ReplaceMode | None = None
    drift: bool = False

    @property
    def symbol(self) -> str:
        if self.action is Action.REPLACE and self.replace_mode is not None:
            return SYMBOLS[self.replace_mode]
        return SYMBOLS[self.action]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h for h in (self.host, self.from_host) if h)


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    address: str
    host: str
    kind: resources.Kind
    resource_id: str
    verb: Verb
    spec: Mapping[str, Any] | None
    etag: str | None  # the etag the resource carries after the step (None after delete)
    expect: str | None  # the etag it must carry before (None: must not exist)
    deps: tuple[str, ...] = ()
    gate: Gate | None = None
    app: str | None = None
    batch: int | None = None


@dataclass(frozen=True, slots=True)
class Noop:
    address: str
    reason: str


noop = frozen.maker(Noop)  # Noop(address, reason), faster: a no-op plan makes one per resource


@dataclass(frozen=True, slots=True)
class Unmanaged:
    address: str
    host: str
    kind: resources.Kind
    id: str
    owner: str


@dataclass(frozen=True, slots=True)
class Deferred:
    address: str
    host: str
    reason: str


@dataclass(frozen=True, slots=True)
class Warning:
    address: str
    message: str


@dataclass(frozen=True, slots=True)
class Rollout:
    """How one app's machine replacements are batched, for display."""

    app: str
    strategy: str
    batches: int
    create_before_destroy: bool
    auto_revert: bool


@dataclass(frozen=True, slots=True)
class FleetRef:
    commit: str | None
    dirty: bool
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Options:
    targets: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    max_destroy_share: float = 0.5
    allow_mass_destroy: bool = False
    allow_anycast_withdraw: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    fleet: FleetRef
    observed_at: str
    generations: Mapping[str, int]
    options: Options
    changes: tuple[Change, ...]
    steps: tuple[Step, ...]
    noops: tuple[Noop, ...] = ()
    unmanaged: tuple[Unmanaged, ...] = ()
    deferred: tuple[Deferred, ...] = ()
    warnings: tuple[Warning, ...] = ()
    rollouts: tuple[Rollout, ...] = ()
    excluded: tuple[str, ...] = ()  # addresses left out by --target/--exclude
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # host -> the inputs digest (reconciler.core.inputs) apply records on the host once
    # every step of the plan there succeeded; only hosts whose agents keep one
    inputs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        c = Counter(ch.action.value for ch in self.changes)
        out = {a.value: c.get(a.value, 0) for a in Action}
        out["deferred"] = len(self.deferred)
        return out

    def step_index(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}
