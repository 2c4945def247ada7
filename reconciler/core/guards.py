"""Guards: refuse plans that would hurt, unless the operator explicitly allows it. Pure.

* **Mass destroy**: a plan may not destroy more than ``max_destroy_share``
  (default 0.5) of a region's running managed machines (replacements do not
  count: the slot keeps a machine). Allowed by ``--allow-mass-destroy``.
* **Last anycast announcer**: a plan may not leave an app that is announced
  today with no host announcing it (its anycast address would go dark),
  whether by deleting announcements or by a cordoned host's BIRD step
  (``withdraw_all`` withdraws every announcement of the host).
  Allowed by ``--allow-anycast-withdraw``.

A refusal is a :class:`~fleet.errors.GuardError` whose message names the flag.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from fleet.errors import GuardError
from providers import resources
from reconciler.core import plan as P


def check(
    changes: Sequence[P.Change],
    machines_by_region: Mapping[str, int],
    announced: Mapping[str, set[str]],
    options: P.Options,
) -> None:
    problems: list[str] = []
    if not options.allow_mass_destroy:
        destroyed: dict[str, int] = defaultdict(int)
        for c in changes:
            if c.kind is resources.Kind.MACHINE and c.action is P.Action.DESTROY and c.before:
                destroyed[str(c.before.get("region"))] += 1
        for region, n in sorted(destroyed.items()):
            total = machines_by_region.get(region, 0)
            if total and n / total > options.max_destroy_share:
                problems.append(
                    f"plan destroys {n} of {total} machines in region {region} "
                    f"(more than {options.max_destroy_share:.0%}); "
                    "pass --allow-mass-destroy if that is intended"
                )
    if not options.allow_anycast_withdraw:
        remaining = {app: set(hosts) for app, hosts in announced.items()}
        for c in changes:
            if c.kind is resources.Kind.ANNOUNCEMENT and c.action is P.Action.DESTROY and c.app:
                remaining.get(c.app, set()).discard(c.host or "")
            elif c.kind is resources.Kind.ANNOUNCEMENT and c.app:
                remaining.setdefault(c.app, set()).add(c.host or "")
        for c in changes:  # a cordon's BIRD step withdraws all of its host's (a --target'd one too)
            if c.kind is resources.Kind.BGP and (c.after or {}).get("withdraw_all"):
                for hosts in remaining.values():
                    hosts.discard(c.host or "")
        for app, hosts in sorted(announced.items()):
            if hosts and not remaining.get(app):
                problems.append(
                    f"plan removes the last host announcing app {app}'s anycast address "
                    f"(announced today by {', '.join(sorted(hosts))}); "
                    "pass --allow-anycast-withdraw if that is intended"
                )
    if problems:
        raise _Refused(problems)


class _Refused(GuardError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("guard: " + "; ".join(problems))

    def lines(self) -> list[str]:
        return [f"guard: {p}" for p in self.problems]
