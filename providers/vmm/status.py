"""Deciding a machine's state from whether its VMM runs and what its init reported (pure)."""

from __future__ import annotations

import dataclasses

from providers.vmm.console import BootReport
from providers.vmm.spec import MachineState, MachineStatus


def decide(name: str, running: bool, report: BootReport, pid: int = 0) -> MachineStatus:
    """Running VMM: starting or running. Ended VMM: stopped or failed, with the exit status.

    An app that exits 0, or exits in any way after a stop was requested, is
    ``stopped``; any other end (non-zero exit, a signal nobody sent, a VM that
    ended without the init reporting) is ``failed``.
    """
    exit_event = report.exit
    stop_event = report.stop
    stop_signal = stop_event.int("signal") if stop_event else None
    errors = "; ".join(e for e in report.errors if e)
    if running and exit_event is None:
        state = MachineState.RUNNING if report.started else MachineState.STARTING
        return MachineStatus(name, state, pid=pid, stop_signal=stop_signal, detail=errors)
    if exit_event is None:
        return MachineStatus(
            name,
            MachineState.FAILED,
            detail=errors or "the VM ended without the init reporting an exit status",
        )
    code = exit_event.int("code")
    sig = exit_event.int("signal")
    stopped = stop_event is not None or code == 0
    state = MachineState.STOPPED if stopped else MachineState.FAILED
    detail = f"exit code {code}" if code is not None else f"killed by signal {sig}"
    if errors:
        detail += f" ({errors})"
    return MachineStatus(
        name,
        state,
        pid=pid if running else 0,
        exit_code=code,
        exit_signal=sig,
        stop_signal=stop_signal,
        detail=detail,
    )


def after_requested_stop(st: MachineStatus, stop_requested: bool) -> MachineStatus:
    """``st``, except that a machine whose stop this host requested ended ``stopped``.

    The console cannot tell every requested stop: a guest slower than its kill
    timeout plus grace (TCG on a loaded host), or one whose console could not be
    reached, is killed before its init reports the exit, which reads as
    ``failed``. Left so, the supervisor restarted it under its restart policy
    and the edge's waker stayed off (it wakes stopped machines only): every
    request met no server until the reboot. Whoever asked for the stop (an
    operator, autostop, a drain) meant stopped.
    """
    if not stop_requested or st.state is not MachineState.FAILED:
        return st
    why = st.detail or "the VM ended"
    return dataclasses.replace(st, state=MachineState.STOPPED, detail=f"stopped on request ({why})")
