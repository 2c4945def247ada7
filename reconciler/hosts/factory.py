"""Build a HostClient for each Host document of the fleet.

A factory is ``Callable[[fleet.model.Host], HostClient]``. ``from_option``
reads the ``--hosts`` option (or ``$FLEET_HOSTS``):

* ``memory:PATH``: in-process hosts persisted in PATH (development, tests,
  CI demos). Created empty on first use.
* unset: the SSH transport, which a later issue adds here; until then live
  observation and apply ask for ``--observed FILE`` or ``--hosts memory:PATH``.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet import model
from fleet.errors import FleetError
from reconciler.hosts import memory, protocol

Factory = Callable[[model.Host], protocol.HostClient]


def from_option(option: str | None) -> Factory:
    if option and option.startswith("memory:"):
        return memory.MemoryFleet(option.removeprefix("memory:")).client
    if option:
        raise FleetError(f"--hosts {option!r}: expected memory:PATH")
    raise FleetError(
        "live hosts need the SSH transport, which is not built yet: "
        "plan with --observed FILE, or use in-process hosts with --hosts memory:PATH"
    )
