"""Reconciliation status with conditions in the manner of Flux. Pure.

The document is what ``reconcile status`` prints and what is stored in the
state store (so every operator sharing a PostgreSQL store sees the same):

* ``Reconciling`` True while a plan/apply is in progress (reason
  ``Progressing``), and ``Ready`` then goes ``Unknown``;
* ``Ready`` True (reason ``ReconciliationSucceeded``) once the hosts match the
  commit, False with the failure's reason otherwise;
* ``Stalled`` True when retrying the same commit cannot help (an invalid fleet,
  a guard that refuses the plan): a new commit is needed.

Each condition carries reason, message, the commit observed and
``lastTransitionTime``, which only moves when the condition's status changes.
"""

from __future__ import annotations

import copy
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

Doc = dict[str, Any]


def _set(
    doc: Doc, kind: str, status: str, *, reason: str, message: str, commit: str | None, now: str
) -> None:
    conds: list[dict[str, Any]] = doc.setdefault("conditions", [])
    for c in conds:
        if c["type"] == kind:
            if c["status"] != status:
                c["lastTransitionTime"] = now
            c.update(status=status, reason=reason, message=message, observedCommit=commit)
            return
    conds.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedCommit": commit,
            "lastTransitionTime": now,
        }
    )


def _drop(doc: Doc, kind: str) -> None:
    doc["conditions"] = [c for c in doc.get("conditions", []) if c["type"] != kind]


def reconciling(prev: Doc | None, commit: str | None, message: str, now: str) -> Doc:
    doc = copy.deepcopy(prev or {})
    doc["lastAttemptedCommit"] = commit
    _set(doc, RECONCILING, "True", reason="Progressing", message=message, commit=commit, now=now)
    _set(
        doc,
        READY,
        "Unknown",
        reason="Progressing",
        message="reconciliation in progress",
        commit=commit,
        now=now,
    )
    _drop(doc, STALLED)
    return doc


def ready(prev: Doc | None, commit: str | None, message: str, now: str) -> Doc:
    doc = copy.deepcopy(prev or {})
    doc["lastAttemptedCommit"] = commit
    doc["lastAppliedCommit"] = commit
    doc["lastHandledAt"] = now
    _set(
        doc,
        READY,
        "True",
        reason="ReconciliationSucceeded",
        message=message,
        commit=commit,
        now=now,
    )
    _drop(doc, RECONCILING)
    _drop(doc, STALLED)
    return doc


def failed(
    prev: Doc | None, commit: str | None, reason: str, message: str, now: str, *, stalled: bool
) -> Doc:
    doc = copy.deepcopy(prev or {})
    doc["lastAttemptedCommit"] = commit
    doc["lastHandledAt"] = now
    _set(doc, READY, "False", reason=reason, message=message, commit=commit, now=now)
    _drop(doc, RECONCILING)
    if stalled:
        _set(doc, STALLED, "True", reason=reason, message=message, commit=commit, now=now)
    else:
        _drop(doc, STALLED)
    return doc


def condition(doc: Doc | None, kind: str) -> dict[str, Any] | None:
    for c in (doc or {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return None


def text(doc: Doc | None) -> str:
    """The status as an operator reads it."""
    if not doc:
        return "No reconciliation recorded yet.\n"
    lines = [
        f"Source:        {doc.get('source', '-')} ({doc.get('branch', '-')})",
        f"Last applied:  {doc.get('lastAppliedCommit') or '-'}",
        f"Last attempt:  {doc.get('lastAttemptedCommit') or '-'}",
        f"Handled at:    {doc.get('lastHandledAt') or '-'}",
        "",
        f"{'TYPE':<12} {'STATUS':<8} {'REASON':<26} {'COMMIT':<13} MESSAGE",
    ]
    for c in doc.get("conditions", []):
        commit = (c.get("observedCommit") or "-")[:12]
        lines.append(
            f"{c['type']:<12} {c['status']:<8} {c['reason']:<26} {commit:<13} {c['message']}"
        )
    return "\n".join(lines) + "\n"
