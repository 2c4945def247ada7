"""What a command run on a host left behind: one small value, no SSH library.

Its own module so that code which only relays commands (the connection
holder's clients, :mod:`reconciler.hosts.control`) can build and read results
without importing the transport (paramiko), which is most of a command's
start-up (docs/ssh.md, "Start-up cost").
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a finished command left: exit status, stdout and stderr bytes, duration."""

    host: str
    command: str
    exit_status: int
    stdout: bytes = field(repr=False)
    stderr: bytes = field(repr=False)
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def lines(self) -> list[str]:
        return self.stdout.decode("utf-8", "replace").splitlines()
