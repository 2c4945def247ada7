"""Deciding a machine's state from whether its VMM runs and what its init reported (pure)."""

from __future__ import annotations

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
