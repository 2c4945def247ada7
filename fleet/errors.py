"""The project's one error tree.

Every error a user can cause or meet derives from :class:`FleetError`; the CLIs
print a ``FleetError`` as one clear line (or one line per collected error) and
exit 1. Anything else escaping is a bug and keeps its traceback.

::

    FleetError                      root; ``str()`` is the one-line message
    ├── ModelError                  one problem in the fleet's YAML, with file:line:col,
    │                               the document (``App/web``) and the JSON path
    ├── ModelErrors                 all problems found while loading, collected
    ├── PlanError                   the plan cannot be made (e.g. placement shortfall)
    │   └── GuardError              a guard refused the plan; says which flag allows it
    ├── StateError                  state store problems (journal, history)
    │   └── LockError               another apply holds the lock; carries holder and nonce
    ├── HostError                   one host (and action) failed; ``retryable`` says
    │   │                           whether trying again may help
    │   ├── HostUnreachable         transport failure (retryable)
    │   ├── HostKeyMismatch         pinned host key differs or is unknown (permanent)
    │   ├── PreconditionFailed      the action's expected etag no longer holds
    │   └── ProtocolError           agent speaks another protocol version
    ├── ProviderError               a mechanism failed on this machine (image, VMM, ...)
    │   ├── ImageError              image resolution, digest mismatch, hostile layer
    │   └── VMMError                hypervisor could not prepare, start or stop a machine
    └── LabError                    the local lab could not be built, inspected or removed

Third-party exceptions are mapped into this tree at the one module that uses
the library (``raise HostUnreachable(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class FleetError(Exception):
    """Root of every error a user can cause or meet."""

    def lines(self) -> list[str]:
        """The message as the CLI prints it, one line per problem."""
        return [str(self)]


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the fleet a problem is: file, 1-based line and column, document, path."""

    file: str
    line: int = 0
    col: int = 0
    document: str = ""
    path: str = ""

    def prefix(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}:{self.col or 1}"
        parts = [where]
        if self.document:
            parts.append(self.document)
        if self.path:
            parts.append(self.path)
        return ": ".join(parts)


class ModelError(FleetError):
    """One problem in the fleet's YAML.

    Rendered ``path/to/file.yaml:LINE:COL: App/web: spec.services[0].internal_port: msg``.
    """

    def __init__(self, location: Location, message: str) -> None:
        self.location = location
        self.message = message
        super().__init__(f"{location.prefix()}: {message}")

    def sort_key(self) -> tuple[str, int, int, str]:
        loc = self.location
        return (loc.file, loc.line, loc.col, self.message)


class ModelErrors(FleetError):
    """All the problems found in a fleet, in file and line order."""

    def __init__(self, errors: Iterable[ModelError]) -> None:
        self.errors: Sequence[ModelError] = sorted(errors, key=ModelError.sort_key)
        n = len(self.errors)
        head = str(self.errors[0]) if self.errors else "invalid fleet"
        more = f" (and {n - 1} more)" if n > 1 else ""
        super().__init__(head + more)

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


class PlanError(FleetError):
    """The plan cannot be made, e.g. a placement shortfall."""


class GuardError(PlanError):
    """A safety guard refused the plan; the message names the flag that allows it."""


class StateError(FleetError):
    """The state store (locks, journal, history) failed or is inconsistent."""


class LockError(StateError):
    """Another apply holds the lock."""

    def __init__(self, message: str, *, holder: str = "", nonce: str = "", since: str = "") -> None:
        self.holder = holder
        self.nonce = nonce
        self.since = since
        super().__init__(message)


class HostError(FleetError):
    """A host, or one action on it, failed.

    ``retryable`` is true for transient failures (network, timeouts) and false
    for permanent ones (a refused host key, a bad request).
    """

    retryable: bool = False

    def __init__(self, host: str, message: str, *, action: str = "") -> None:
        self.host = host
        self.action = action
        self.message = message
        where = f"host {host}" + (f", action {action}" if action else "")
        super().__init__(f"{where}: {message}")


class HostUnreachable(HostError):
    """The host could not be reached or the connection broke."""

    retryable = True


class HostKeyMismatch(HostError):
    """The host's SSH key is unknown or differs from the pinned one."""


class PreconditionFailed(HostError):
    """The action's expected etag no longer matches the host's inventory."""

    def __init__(self, host: str, message: str, *, action: str = "", current: str = "") -> None:
        self.current = current
        super().__init__(host, message, action=action)


class ProtocolError(HostError):
    """The agent on the host speaks another protocol version, or answered garbage."""


class ProviderError(FleetError):
    """A mechanism (image builder, hypervisor, network daemon) failed on this machine."""


class ImageError(ProviderError):
    """An image could not be resolved, verified or unpacked safely."""


class VMMError(ProviderError):
    """A hypervisor could not prepare, start, stop or inspect a machine."""


class LabError(FleetError):
    """The local lab could not be built, inspected or torn down."""
