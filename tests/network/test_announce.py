"""The announcement state machine: health gate, graceful shutdown, hold-down."""

from __future__ import annotations

from providers.network import announce
from providers.network.announce import AnnounceState, AnnounceTimers, Phase
from providers.network.bgp import Export

T = AnnounceTimers(grace_s=5.0, hold_down_s=10.0)


def run(
    state: AnnounceState, now: float, *, healthy: bool = True, draining: bool = False
) -> AnnounceState:
    return announce.step(state, healthy=healthy, draining=draining, now=now, timers=T)


def test_first_announcement_waits_for_the_hold_down() -> None:
    s = run(AnnounceState.initial(), 100.0)
    assert s.phase is Phase.HELD_DOWN and s.export is None and s.until == 110.0
    assert run(s, 109.9).phase is Phase.HELD_DOWN
    s = run(s, 110.0)
    assert s.phase is Phase.ANNOUNCED and s.export is Export.ANNOUNCE


def test_unhealthy_withdraws_at_once_and_reannounce_needs_a_full_hold_down() -> None:
    s = AnnounceState.announced(0.0)
    s = run(s, 50.0, healthy=False)
    assert s.phase is Phase.WITHDRAWN and s.export is None
    s = run(s, 51.0)  # healthy again
    assert s.phase is Phase.HELD_DOWN
    s = run(s, 55.0, healthy=False)  # a flap during the hold-down ...
    assert s.phase is Phase.WITHDRAWN
    s = run(s, 56.0)  # ... restarts the clock
    assert s.until == 66.0
    assert run(s, 65.0).export is None
    assert run(s, 66.0).export is Export.ANNOUNCE


def test_planned_withdraw_is_graceful_for_the_grace_period() -> None:
    s = run(AnnounceState.announced(0.0), 20.0, draining=True)
    assert s.phase is Phase.GRACEFUL and s.export is Export.GRACEFUL and s.until == 25.0
    assert run(s, 24.9, draining=True).export is Export.GRACEFUL
    gone = run(s, 25.0, draining=True)
    assert gone.phase is Phase.WITHDRAWN and gone.since == 25.0
    # A host that fails during its grace period withdraws at once.
    assert run(s, 21.0, healthy=False, draining=True).phase is Phase.WITHDRAWN
    # A cancelled drain keeps the route (it never left).
    assert run(s, 21.0).phase is Phase.ANNOUNCED
    # Draining hosts do not announce, even when healthy.
    assert run(gone, 30.0, draining=True).phase is Phase.WITHDRAWN


def test_zero_timers_mean_immediate() -> None:
    zero = AnnounceTimers(grace_s=0, hold_down_s=0)
    s = announce.step(AnnounceState.initial(), healthy=True, draining=False, now=1.0, timers=zero)
    assert s.phase is Phase.ANNOUNCED
    s = announce.step(s, healthy=True, draining=True, now=2.0, timers=zero)
    assert s.phase is Phase.WITHDRAWN


def test_health_gate_needs_proxy_and_a_healthy_machine() -> None:
    assert announce.healthy_apps(True, {"web": 2, "api": 0}) == {"web": True, "api": False}
    assert announce.healthy_apps(False, {"web": 2}) == {"web": False}


def test_step_all_gives_exports_and_deadlines() -> None:
    states = {"web": AnnounceState.announced(0.0), "api": AnnounceState.initial()}
    states, exports = announce.step_all(
        states, healthy={"web": True, "api": True}, draining=False, now=1.0, timers=T
    )
    assert exports == {"web": Export.ANNOUNCE}
    assert announce.next_deadline(states) == 11.0
    # The host drains: web goes graceful, api (held down) is dropped.
    states, exports = announce.step_all(
        states, healthy={"web": True, "api": True}, draining=True, now=2.0, timers=T
    )
    assert exports == {"web": Export.GRACEFUL}
    # An app that leaves the host goes through its grace, then is forgotten.
    states = {"web": AnnounceState.announced(0.0)}
    states, exports = announce.step_all(states, healthy={}, draining=False, now=3.0, timers=T)
    assert exports == {"web": Export.GRACEFUL}
    states, exports = announce.step_all(states, healthy={}, draining=False, now=8.0, timers=T)
    assert states == {} and exports == {}
    assert announce.next_deadline(states) is None
