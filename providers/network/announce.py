"""When an app's anycast addresses are announced: health gate, graceful shutdown, hold-down.

Pure state machine with explicit timestamps (the caller passes ``now``; no
clock is read here), one :class:`AnnounceState` per app on a host:

::

    WITHDRAWN --healthy--> HELD_DOWN --healthy for hold_down--> ANNOUNCED
        ^                     |                                   |   |
        +----unhealthy--------+          unhealthy (at once) <----+   | draining
        +------------------------------------------------------------+   v
        +---------------- grace period over, or unhealthy ------- GRACEFUL

- *Unhealthy* (the host's proxy is down, or no healthy machine of the app is
  reachable) withdraws at once: attracting traffic that cannot be served is
  worse than moving it.
- *Draining* (cordon, drain, the app leaving the host: planned) keeps the
  route for ``grace_s`` tagged with the graceful-shutdown community (65535:0,
  RFC 8326) so upstreams move traffic away first, then withdraws.
- A withdrawn app is re-announced only after it has been healthy for
  ``hold_down_s`` without interruption (a flapping check cannot flap a
  route). This also applies to the very first announcement; an agent that
  restarts adopts what BIRD already announces with :meth:`AnnounceState.announced`.

:func:`next_deadline` tells the caller when to evaluate again even if no
input changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from providers.network.bgp import Export


class Phase(StrEnum):
    WITHDRAWN = "withdrawn"
    HELD_DOWN = "held-down"
    ANNOUNCED = "announced"
    GRACEFUL = "graceful"


@dataclass(frozen=True, slots=True)
class AnnounceTimers:
    grace_s: float = 30.0
    hold_down_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AnnounceState:
    phase: Phase
    since: float  # when this phase began
    until: float | None = None  # when HELD_DOWN or GRACEFUL ends

    @classmethod
    def initial(cls) -> AnnounceState:
        return cls(Phase.WITHDRAWN, 0.0)

    @classmethod
    def announced(cls, now: float) -> AnnounceState:
        return cls(Phase.ANNOUNCED, now)

    @property
    def export(self) -> Export | None:
        """What the BIRD config should say for this app (None: not announced)."""
        if self.phase is Phase.ANNOUNCED:
            return Export.ANNOUNCE
        if self.phase is Phase.GRACEFUL:
            return Export.GRACEFUL
        return None


def healthy_apps(proxy_healthy: bool, healthy_machines: Mapping[str, int]) -> dict[str, bool]:
    """The health gate: the host's proxy is up and at least one healthy machine is reachable."""
    return {app: proxy_healthy and count >= 1 for app, count in healthy_machines.items()}


def step(
    state: AnnounceState,
    *,
    healthy: bool,
    draining: bool,
    now: float,
    timers: AnnounceTimers,
) -> AnnounceState:
    """The next state of one app's announcement at ``now``."""
    phase = state.phase
    if phase is Phase.ANNOUNCED:
        if not healthy:
            return AnnounceState(Phase.WITHDRAWN, now)
        if draining:
            if timers.grace_s <= 0:
                return AnnounceState(Phase.WITHDRAWN, now)
            return AnnounceState(Phase.GRACEFUL, now, now + timers.grace_s)
        return state
    if phase is Phase.GRACEFUL:
        assert state.until is not None
        if not healthy:
            return AnnounceState(Phase.WITHDRAWN, now)
        if now >= state.until:
            return AnnounceState(Phase.WITHDRAWN, state.until)
        if not draining:  # drain cancelled while the route was still up
            return AnnounceState(Phase.ANNOUNCED, now)
        return state
    if phase is Phase.HELD_DOWN:
        assert state.until is not None
        if not healthy or draining:
            return AnnounceState(Phase.WITHDRAWN, now)
        if now >= state.until:
            return AnnounceState(Phase.ANNOUNCED, now)
        return state
    # WITHDRAWN
    if healthy and not draining:
        if timers.hold_down_s <= 0:
            return AnnounceState(Phase.ANNOUNCED, now)
        return AnnounceState(Phase.HELD_DOWN, now, now + timers.hold_down_s)
    return state


def step_all(
    states: Mapping[str, AnnounceState],
    *,
    healthy: Mapping[str, bool],
    draining: bool | frozenset[str],
    now: float,
    timers: AnnounceTimers,
) -> tuple[dict[str, AnnounceState], dict[str, Export]]:
    """Step every app this host serves (apps in ``healthy``); return states and exports.

    ``draining`` is True for the whole host (cordon/drain) or the set of apps
    leaving it. An app no longer in ``healthy`` is treated as draining and
    unhealthy-free, so it goes through its grace period before disappearing.
    """
    new: dict[str, AnnounceState] = {}
    for app in sorted(set(states) | set(healthy)):
        before = states.get(app, AnnounceState.initial())
        leaving = app not in healthy
        is_draining = (
            leaving or draining is True or (isinstance(draining, frozenset) and app in draining)
        )
        after = step(
            before,
            healthy=healthy.get(app, True),
            draining=is_draining,
            now=now,
            timers=timers,
        )
        if leaving and after.phase is Phase.WITHDRAWN:
            continue  # forgotten once withdrawn
        new[app] = after
    exports = {app: s.export for app, s in new.items() if s.export is not None}
    return new, exports


def next_deadline(states: Mapping[str, AnnounceState]) -> float | None:
    """The earliest time a state changes on its own (end of a grace or hold-down)."""
    times = [s.until for s in states.values() if s.until is not None]
    return min(times) if times else None
