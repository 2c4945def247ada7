"""Render a plan for people: text for terminals, Markdown for pull-request comments. Pure.

Summary first (counts by action), then the changes grouped by app (machines)
and by host (images, routes, announcements); in each group destroys and
replacements come first. Terraform's symbols: ``+`` create, ``-`` destroy,
``~`` update (and start), ``-/+`` destroy-before-create replacement, ``+/-``
create-before-destroy replacement. An update shows only changed attributes and
how many it hides. Verbosity 1 adds every no-op with its reason. JSON is
:mod:`reconciler.core.planfile`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from reconciler.core import diff, observed
from reconciler.core import plan as P

_FIRST = {
    P.Action.DESTROY: 0,
    P.Action.REPLACE: 1,
    P.Action.UPDATE: 2,
    P.Action.START: 3,
    P.Action.CREATE: 4,
}
COLLAPSE_LINES = 15
# The attributes a new resource shows without -v (all, for kinds not listed).
HEADLINE = {"machine": frozenset({"image", "vm", "env", "cmd", "entrypoint", "address"})}


def summary(plan: P.Plan) -> str:
    n = plan.counts()
    if not plan.changes:
        head = "No changes. The hosts match the fleet."
    else:
        parts = [
            f"{n['create']} to add",
            f"{n['update']} to change",
            f"{n['replace']} to replace",
            f"{n['destroy']} to destroy",
        ]
        if n["start"]:
            parts.append(f"{n['start']} to start")
        head = "Plan: " + ", ".join(parts) + "."
    if plan.deferred:
        head += f" {len(plan.deferred)} deferred (not observed)."
    return head


def _origin(plan: P.Plan) -> str:
    commit = plan.fleet.commit[:12] if plan.fleet.commit else "no commit"
    dirty = ""
    if plan.fleet.dirty:
        dirty = ", DIRTY work tree: apply refuses it without --allow-dirty"
    at = plan.observed_at or "unknown time"
    return f"Fleet at {commit}{dirty}; observed {len(plan.generations)} host(s) at {at}."


def _fmt(value: Any) -> str:
    if value is diff.MISSING:
        return "(absent)"
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=observed.plain)


def _groups(plan: P.Plan) -> list[tuple[str, list[P.Change]]]:
    groups: dict[str, list[P.Change]] = defaultdict(list)
    for c in plan.changes:
        if c.address.startswith("app."):
            groups[f"app {c.app}"].append(c)
        else:
            groups[f"host {c.host}"].append(c)
    ordered = sorted(groups.items(), key=lambda kv: (not kv[0].startswith("app "), kv[0]))
    return [(name, sorted(cs, key=lambda c: (_FIRST[c.action], c.address))) for name, cs in ordered]


def _where(c: P.Change) -> str:
    if c.from_host and c.from_host != c.host:
        return f" on {c.from_host} -> {c.host}"
    return f" on {c.host}" if c.address.startswith("app.") and c.host else ""


def change_lines(c: P.Change, verbose: int = 0) -> list[str]:
    lines = [f"{c.symbol:>3} {c.address}{_where(c)}", f"      # {c.reason}"]
    if c.action is P.Action.CREATE and c.after is not None:
        shown = HEADLINE.get(c.kind.value)
        hidden = 0
        for key, value in sorted(c.after.items()):
            if value in (None, [], {}):
                continue
            if shown is not None and key not in shown and not verbose:
                hidden += 1
                continue
            lines.append(f"      + {key}: {_fmt(value)}")
        if hidden:
            lines.append(f"        ({hidden} more attributes; -v shows them)")
    elif c.action in (P.Action.UPDATE, P.Action.REPLACE):
        for item in c.diff:
            note = "  # forces replacement" if item.effect == "replace" else ""
            lines.append(f"      ~ {item.dotted}: {_fmt(item.before)} -> {_fmt(item.after)}{note}")
        if c.after is not None:
            changed = {str(i.path[0]) for i in c.diff}
            hidden = len([k for k in c.after if k not in changed])
            if hidden:
                lines.append(f"        ({hidden} unchanged attributes hidden)")
    elif c.action is P.Action.START and c.before is not None and c.after is not None:
        lines.append(
            f"      ~ state: {_fmt(c.before.get('state'))} -> {_fmt(c.after.get('state'))}"
        )
    return lines


def _rollouts(plan: P.Plan) -> Mapping[str, P.Rollout]:
    return {r.app: r for r in plan.rollouts}


def _rollout_text(r: P.Rollout) -> str:
    mode = "create before destroy" if r.create_before_destroy else "destroy before create"
    revert = ", auto-revert on a failed health gate" if r.auto_revert else ""
    return f"{r.strategy}: {r.batches} batch(es), {mode}{revert}"


def text(plan: P.Plan, verbose: int = 0) -> str:
    out = [summary(plan), _origin(plan)]
    if plan.deferred:
        out += ["", "Deferred (could not be observed; nothing is guessed):"]
        out += [f"  ? {d.address}: {d.reason}" for d in plan.deferred]
    if plan.warnings:
        out += ["", "Warnings:"]
        out += [f"  ! {w.address}: {w.message}" for w in plan.warnings]
    rollouts = _rollouts(plan)
    for name, changes in _groups(plan):
        out.append("")
        app = name.removeprefix("app ")
        head = name
        if name.startswith("app ") and app in rollouts:
            head += f"  ({_rollout_text(rollouts[app])})"
        out.append(head)
        for c in changes:
            out += ["  " + line for line in change_lines(c, verbose)]
    if plan.excluded:
        out += ["", f"Left out by --target/--exclude: {len(plan.excluded)} change(s)"]
        if verbose:
            out += [f"  {a}" for a in plan.excluded]
    if plan.unmanaged:
        out += ["", "Unmanaged (not owned by the fleet; never touched):"]
        out += [f"  {u.address} (owner {u.owner})" for u in plan.unmanaged]
    if plan.noops:
        if verbose:
            out += ["", "No-ops:"]
            out += [f"  = {n.address}: {n.reason}" for n in plan.noops]
        else:
            out += ["", f"{len(plan.noops)} resource(s) unchanged; -v shows why."]
    return "\n".join(out) + "\n"


def markdown(plan: P.Plan, verbose: int = 0) -> str:
    n = plan.counts()
    out = [f"### reconcile plan: {summary(plan)}", "", _origin(plan), ""]
    out += [
        "| add | change | replace | destroy | start | deferred |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {n['create']} | {n['update']} | {n['replace']} | {n['destroy']} | {n['start']} "
        f"| {n['deferred']} |",
    ]
    if plan.deferred:
        out += ["", "**Deferred** (could not be observed; nothing is guessed):", ""]
        out += [f"- `{d.address}`: {d.reason}" for d in plan.deferred]
    if plan.warnings:
        out += ["", "**Warnings**", ""]
        out += [f"- `{w.address}`: {w.message}" for w in plan.warnings]
    rollouts = _rollouts(plan)
    for name, changes in _groups(plan):
        body = [line for c in changes for line in change_lines(c, verbose)]
        app = name.removeprefix("app ")
        title = f"{name}: {len(changes)} change(s)"
        if name.startswith("app ") and app in rollouts:
            title += f" ({_rollout_text(rollouts[app])})"
        block = ["```diff", *body, "```"]
        out.append("")
        if len(body) > COLLAPSE_LINES:
            out += [f"<details><summary>{title}</summary>", "", *block, "", "</details>"]
        else:
            out += [f"**{title}**", "", *block]
    if plan.unmanaged:
        out += ["", f"<details><summary>Unmanaged: {len(plan.unmanaged)}</summary>", ""]
        out += [f"- `{u.address}` (owner {u.owner})" for u in plan.unmanaged]
        out += ["", "</details>"]
    if plan.noops and verbose:
        out += ["", f"<details><summary>No-ops: {len(plan.noops)}</summary>", ""]
        out += [f"- `{x.address}`: {x.reason}" for x in plan.noops]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"
