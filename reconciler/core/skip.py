"""Which hosts a plan may skip wholesale, and what it then says about them. Pure.

A no-op plan of a large fleet spent its time on Python work per resource:
parse it, build its desired spec and etag, record its no-op. A host is skipped
instead (none of that; only its no-ops, made from the desired side's ids) when

* it reports the inputs digest (:mod:`reconciler.core.inputs`) the reconciler
  recorded after its last complete apply, and that digest equals the one of
  the plan being made: nothing its resources are made from has changed since;
* its agent kept that digest: the agent forgets it on any change to its
  resources made by anything else (another apply, a step, a manual command);
* it is *settled* (:func:`reconciler.core.observed.summarize`): no drift, no
  stopped, failed or failing machine, nothing unmanaged;
* what it holds is what the plan wants there: the same machine slots, each
  seen on no other host, and the same ids of every other kind.

Anything else takes the full path, resource by resource, which is what the
plan always did. A skipped host's no-ops and warnings are those the full path
gives a host whose every etag matches.
"""

from __future__ import annotations

from reconciler.core import observed


def candidate(obs: observed.HostObservation) -> observed.Summary | None:
    """The host's summary when it may be skipped (the digest compared later); else None."""
    if not obs.inputs:
        return None
    summary = observed.summarize(obs)
    if not summary.settled or summary.unmanaged:
        return None
    return summary
