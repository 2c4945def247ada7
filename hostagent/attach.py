"""Following a machine's console the way ``docker run`` shows a container's output.

The console log holds kernel messages, the init's ``FLEET:`` report lines and
the app's output; an attached terminal wants only the last. :func:`app_lines`
is the pure filter; :func:`follow` tails the log until the machine ends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

from providers.vmm.spec import MachineState, MachineStatus

_KERNEL_RE = re.compile(r"^\[\s*\d+\.\d+\] ")
_REPORT_RE = re.compile(r"^FLEET:[0-9a-f]+:")


def app_lines(text: str) -> list[str]:
    """The app's lines in a console log excerpt: no kernel or init report lines."""
    out = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line or _KERNEL_RE.match(line) or _REPORT_RE.match(line):
            continue
        out.append(line)
    return out


def follow(
    read: Callable[[], str],
    status: Callable[[], MachineStatus],
    *,
    poll: float = 0.1,
) -> Iterator[str]:
    """Yield app lines as they appear until the machine has stopped or failed."""
    seen = 0
    done = {MachineState.STOPPED, MachineState.FAILED}
    while True:
        ended = status().state in done
        text = read()
        cut = text.rfind("\n") + 1 if not ended else len(text)
        if cut > seen:
            yield from app_lines(text[seen:cut])
            seen = cut
        if ended:
            return
        time.sleep(poll)
