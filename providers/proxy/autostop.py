"""Autostop: which idle machines to stop this cycle. Pure.

The agent samples HAProxy's ``show stat`` (current sessions and seconds since
the last one, per server) each cycle and asks :func:`decide`. A machine is
idle when HAProxy sees it UP with no session, and none started for
``idle_after_s``; idle machines of an app with ``auto_stop_machines`` stop,
longest idle first, as many per cycle as keep at least the app's floor
running. No clock is read here: ``stat`` carries the ages.

The floor has two forms (:class:`Policy`): a count (``min_running``: at least
that many of the machines in ``table`` stay up) for a caller that sees every
machine the floor covers, and ``pinned`` machines that never stop, which is
how a host agent keeps ``min_machines_running`` per region without asking the
other hosts: the reconciler sends the number, and the region's first
``min_machines_running`` slots (``ams#1``, ``ams#2``...) are the ones kept
(:func:`pinned_slot`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet import model
from providers.proxy import table as t

if TYPE_CHECKING:  # the planner imports this module: not HAProxy's runtime API client
    from providers.proxy import runtime


@dataclass(frozen=True, slots=True)
class Decision:
    """Stop (or suspend) one machine, and why."""

    machine: str
    action: model.AutoStop
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """How one app's idle machines stop: the action, and what must keep running."""

    action: model.AutoStop
    min_running: int = 0  # of the app's machines in the table that are not draining
    pinned: frozenset[str] = frozenset()  # machines (slot ids) that never stop
    idle_after_s: float | None = None  # None: the caller's default


def policy(app: model.App) -> Policy:
    """The app's policy from its services (the first that auto-stops decides the action)."""
    stopping = [s for s in app.services if s.auto_stop_machines is not model.AutoStop.OFF]
    if not stopping:
        return Policy(model.AutoStop.OFF)
    floor = max(s.min_machines_running for s in stopping)
    afters = [s.auto_stop_after_s for s in stopping if s.auto_stop_after_s is not None]
    return Policy(stopping[0].auto_stop_machines, floor, idle_after_s=min(afters, default=None))


def pinned_slot(slot_key: str, min_machines_running: int) -> bool:
    """Whether slot ``ams#2`` (or ``web/ams#2``) is one of its region's first ``min`` slots."""
    _, _, index = slot_key.rpartition("#")
    return index.isdigit() and int(index) <= min_machines_running


def idle_seconds(stat: runtime.ServerStat) -> int | None:
    """Seconds the server has had no session; None while it has one."""
    if stat.current > 0 or stat.queued > 0:
        return None
    if stat.last_session_s < 0:  # never had one: idle since it came up
        return stat.last_change_s
    return min(stat.last_session_s, stat.last_change_s)


def decide(
    policies: Mapping[str, Policy],
    table: t.RoutingTable,
    stats: Iterable[runtime.ServerStat],
    *,
    idle_after_s: float,
    running: Mapping[str, int] | None = None,
) -> tuple[Decision, ...]:
    """Machines of ``table``'s local servers to stop now.

    ``idle_after_s`` applies to apps whose policy does not set its own.

    A machine is a candidate only when every one of its servers is UP in
    HAProxy and idle long enough (a DOWN server is a machine already stopped,
    or one the health checks doubt: neither is autostop's to touch).
    ``running`` is each app's count of running machines ``min_running``
    applies to (default: its local servers in the table that are not draining).
    """
    by_ref = {(s.backend, s.name): s for s in stats}
    idle: dict[str, dict[str, int]] = {}  # app -> machine -> idle seconds (all services idle)
    busy: set[str] = set()
    counted: dict[str, set[str]] = {}
    for route in table.routes:
        for s in route.servers:
            if s.role is not t.Role.LOCAL or s.draining:
                continue
            counted.setdefault(route.app, set()).add(s.machine)
            stat = by_ref.get((route.name, s.name))
            up = stat is not None and stat.status.startswith("UP")
            age = idle_seconds(stat) if stat is not None and up else None
            rule = policies.get(route.app)
            after = idle_after_s if rule is None or rule.idle_after_s is None else rule.idle_after_s
            if age is None or age < after:
                busy.add(s.machine)
            else:
                seen = idle.setdefault(route.app, {})
                seen[s.machine] = min(age, seen.get(s.machine, age))
    out: list[Decision] = []
    for name, machines in sorted(idle.items()):
        rule = policies.get(name)
        if rule is None or rule.action is model.AutoStop.OFF:
            continue
        total = (running or {}).get(name, len(counted.get(name, ())))
        spare = total - rule.min_running
        candidates = sorted(
            ((age, m) for m, age in machines.items() if m not in busy and m not in rule.pinned),
            key=lambda x: (-x[0], x[1]),
        )
        after = idle_after_s if rule.idle_after_s is None else rule.idle_after_s
        for age, machine in candidates[: max(spare, 0)]:
            out.append(Decision(machine, rule.action, f"idle {age}s >= {after:g}s"))
    return tuple(out)
