"""Autostop: which idle machines to stop this cycle. Pure.

The agent samples HAProxy's ``show stat`` (current sessions and seconds since
the last one, per server) each cycle and asks :func:`decide`. A machine is
idle when it has no session and none started for ``idle_after_s``; idle
machines of an app with ``auto_stop_machines`` stop, longest idle first, as
many per cycle as keep at least ``min_machines_running`` of the app running
in that region set. No clock is read here: ``stat`` carries the ages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet import model
from providers.proxy import runtime
from providers.proxy import table as t


@dataclass(frozen=True, slots=True)
class Decision:
    """Stop (or suspend) one machine, and why."""

    machine: str
    action: model.AutoStop
    reason: str


def idle_seconds(stat: runtime.ServerStat) -> int | None:
    """Seconds the server has had no session; None while it has one."""
    if stat.current > 0 or stat.queued > 0:
        return None
    if stat.last_session_s < 0:  # never had one: idle since it came up
        return stat.last_change_s
    return min(stat.last_session_s, stat.last_change_s)


def decide(
    apps: Mapping[str, model.App],
    table: t.RoutingTable,
    stats: Iterable[runtime.ServerStat],
    *,
    idle_after_s: float,
    running: Mapping[str, int] | None = None,
) -> tuple[Decision, ...]:
    """Machines of ``table``'s local servers to stop now.

    ``running`` is each app's count of running machines the floor applies to
    (default: its local servers in the table that are not draining).
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
            age = idle_seconds(stat) if stat is not None else None
            if age is None or age < idle_after_s:
                busy.add(s.machine)
            else:
                seen = idle.setdefault(route.app, {})
                seen[s.machine] = min(age, seen.get(s.machine, age))
    out: list[Decision] = []
    for name, machines in sorted(idle.items()):
        app = apps.get(name)
        if app is None:
            continue
        stopping = [s for s in app.services if s.auto_stop_machines is not model.AutoStop.OFF]
        if not stopping:
            continue
        floor = max(s.min_machines_running for s in stopping)
        action = stopping[0].auto_stop_machines
        total = (running or {}).get(name, len(counted.get(name, ())))
        spare = total - floor
        candidates = sorted(
            ((age, m) for m, age in machines.items() if m not in busy),
            key=lambda x: (-x[0], x[1]),
        )
        for age, machine in candidates[: max(spare, 0)]:
            out.append(Decision(machine, action, f"idle {age}s >= {idle_after_s:g}s"))
    return tuple(out)
