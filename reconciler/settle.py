"""After an apply's steps: wait until the edges announce what the apply asked them to.

An announcement's create (or update) puts the app's addresses on the host and
leaves the decision to announce to the agent's supervisor: it announces once
the host reaches a healthy machine of the app and has for the hold-down (10 s
by default). So the steps end before the edges announce. An edge that starts
announcing joins the upstream router's ECMP group, which rehashes flows over
the new set of next hops: connections moved to that edge, which never saw
them, are reset. If ``reconcile apply`` said "complete" before that, traffic
started right after it (a load test, a deploy that follows) could still lose
one request per connection when the edges join.

So the apply waits here, once for all hosts at the same time (not in each
step: at ``--per-host`` steps at a time, a host with 200 new apps would wait
out the hold-down 100 times), polling the hosts concerned until each of the
announcements reports health ``passing`` (the agent exports it), at most
``timeout``. One still not announced then is reported, not failed: an edge
that reaches no healthy machine of the app is right not to announce it, and
announces it once its health gate passes.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable, Mapping

from fleet.errors import HostError
from providers import resources
from reconciler.core import plan as P
from reconciler.core.observed import Health
from reconciler.hosts import protocol

# The agent's default hold-down (10 s), its health gate's first checks (a check
# or two, over the mesh for a remote machine) and its once-a-second ticker.
TIMEOUT_S = 30.0
POLL_S = 0.5
VERBS = (P.Verb.CREATE, P.Verb.UPDATE, P.Verb.START)


def wanted(steps: Iterable[P.Step]) -> dict[str, set[str]]:
    """Host -> ids of the announcements these (done) steps created or changed. Pure."""
    out: dict[str, set[str]] = {}
    for s in steps:
        if s.kind is resources.Kind.ANNOUNCEMENT and s.verb in VERBS:
            out.setdefault(s.host, set()).add(s.resource_id)
    return out


def wait(
    want: Mapping[str, set[str]],
    clients: Callable[[str], protocol.HostClient],
    *,
    parallelism: int,
    timeout: float = TIMEOUT_S,
    poll: float = POLL_S,
    on_announced: Callable[[str, str], None] = lambda host, rid: None,
    stopped: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, list[str]]:
    """Poll until every wanted announcement is exported; what is still not, by host.

    ``stopped`` (a shutdown asked for: GitOps' watch stopping) ends the wait
    early; what is left is reported as not announced yet.
    """
    left = {host: set(ids) for host, ids in want.items() if ids}
    if not left:
        return {}
    deadline = clock() + timeout
    with cf.ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(left)))) as pool:
        while left:
            hosts = sorted(left)
            answers = pool.map(lambda h: _passing(clients(h)), hosts)
            for host, passing in zip(hosts, answers, strict=True):
                for rid in sorted(left[host] & passing):
                    on_announced(host, rid)
                left[host] -= passing
                if not left[host]:
                    del left[host]
            if not left or clock() >= deadline or stopped():
                break
            sleep(poll)
    return {host: sorted(ids) for host, ids in sorted(left.items())}


def _passing(client: protocol.HostClient) -> set[str]:
    """The announcements this host exports now (none if it cannot say)."""
    try:
        obs = client.observe()
    except HostError:
        return set()
    return {
        r.id
        for r in obs.resources
        if r.kind is resources.Kind.ANNOUNCEMENT and r.status.health is Health.PASSING
    }
