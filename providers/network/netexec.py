"""Run a system tool, optionally inside a network namespace, with errors in our tree.

The one place the network provider calls :mod:`subprocess` for short commands
(``ip``, ``wg``, ``birdc``, ``bird -p``). A failing command becomes a
:class:`~fleet.errors.ProviderError` carrying the command and its stderr.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from fleet.errors import ProviderError

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    """``argv`` prefixed with ``ip netns exec NETNS`` when a namespace is given."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (in ``netns``) and capture its output as text."""
    full = in_netns(argv, netns)
    log.debug("run %s", " ".join(full))
    try:
        result = subprocess.run(full, capture_output=True, text=True, check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProviderError(f"{argv[0]}: {exc}") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ProviderError(
            f"{' '.join(argv)}: exit {result.returncode}: {detail[-1] if detail else ''}"
        )
    return result
