"""The saved plan: a plan to and from its versioned JSON (``format_version``). Pure.

The JSON is what ``reconcile plan --out`` writes, what CI reads and what
``reconcile apply PLANFILE`` executes. Its digest (sha256 of the canonical
JSON) names the apply in the journal, so resuming after a crash continues the
same plan and never mixes two.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fleet.errors import FleetError
from providers import resources
from reconciler.core import diff, observed
from reconciler.core import plan as P

Json = Any


def _value(v: Any) -> Any:
    return None if v is diff.MISSING else v


def _item(i: diff.DiffItem) -> dict[str, Json]:
    out: dict[str, Json] = {"path": list(i.path), "effect": i.effect.value}
    if i.before is not diff.MISSING:
        out["before"] = i.before
    if i.after is not diff.MISSING:
        out["after"] = i.after
    return out


def change_to_json(c: P.Change) -> dict[str, Json]:
    return {
        "address": c.address,
        "kind": c.kind.value,
        "action": c.action.value,
        "symbol": c.symbol,
        "replace_mode": c.replace_mode.value if c.replace_mode else None,
        "reason": c.reason,
        "drift": c.drift,
        "host": c.host,
        "from_host": c.from_host,
        "app": c.app,
        "before": c.before,
        "after": c.after,
        "diff": [_item(i) for i in c.diff],
    }


def step_to_json(s: P.Step) -> dict[str, Json]:
    return {
        "id": s.id,
        "address": s.address,
        "host": s.host,
        "kind": s.kind.value,
        "resource_id": s.resource_id,
        "verb": s.verb.value,
        "spec": s.spec,
        "etag": s.etag,
        "expect": s.expect,
        "deps": list(s.deps),
        "gate": {"min_healthy_s": s.gate.min_healthy_s, "deadline_s": s.gate.deadline_s}
        if s.gate
        else None,
        "app": s.app,
        "batch": s.batch,
    }


def to_json(plan: P.Plan) -> dict[str, Json]:
    o = plan.options
    return {
        "format_version": plan.format_version,
        "created_at": plan.created_at,
        "fleet": {"commit": plan.fleet.commit, "dirty": plan.fleet.dirty, "ref": plan.fleet.ref},
        "observed": {"taken_at": plan.observed_at, "generations": dict(plan.generations)},
        "options": {
            "targets": list(o.targets),
            "excludes": list(o.excludes),
            "max_destroy_share": o.max_destroy_share,
            "allow_mass_destroy": o.allow_mass_destroy,
            "allow_anycast_withdraw": o.allow_anycast_withdraw,
        },
        "summary": plan.counts(),
        "changes": [change_to_json(c) for c in plan.changes],
        "steps": [step_to_json(s) for s in plan.steps],
        "rollouts": [
            {
                "app": r.app,
                "strategy": r.strategy,
                "batches": r.batches,
                "create_before_destroy": r.create_before_destroy,
                "auto_revert": r.auto_revert,
            }
            for r in plan.rollouts
        ],
        "noops": [{"address": n.address, "reason": n.reason} for n in plan.noops],
        "unmanaged": [
            {
                "address": u.address,
                "host": u.host,
                "kind": u.kind.value,
                "id": u.id,
                "owner": u.owner,
            }
            for u in plan.unmanaged
        ],
        "deferred": [
            {"address": d.address, "host": d.host, "reason": d.reason} for d in plan.deferred
        ],
        "warnings": [{"address": w.address, "message": w.message} for w in plan.warnings],
        "excluded": list(plan.excluded),
        **({"inputs": dict(plan.inputs)} if plan.inputs else {}),
    }


def dumps(plan: P.Plan) -> str:
    return json.dumps(to_json(plan), indent=1, sort_keys=True, default=observed.plain) + "\n"


def digest_of(raw: Mapping[str, Json]) -> str:
    return hashlib.sha256(observed.canonical(raw).encode()).hexdigest()


def _diff_item(raw: Json) -> diff.DiffItem:
    return diff.DiffItem(
        tuple(raw["path"]),
        raw.get("before", diff.MISSING),
        raw.get("after", diff.MISSING),
        resources.Effect(raw["effect"]),
    )


def from_json(raw: Json, source: str = "plan") -> P.Plan:
    """Parse a saved plan; a plan of another format version is refused."""
    if not isinstance(raw, dict) or raw.get("format_version") != P.FORMAT_VERSION:
        got = raw.get("format_version") if isinstance(raw, dict) else None
        raise FleetError(
            f"{source}: not a plan of format_version {P.FORMAT_VERSION} (found {got!r}); "
            "make the plan again with this version of reconcile"
        )
    try:
        o = raw["options"]
        changes = tuple(
            P.Change(
                address=c["address"],
                kind=resources.Kind(c["kind"]),
                action=P.Action(c["action"]),
                reason=c["reason"],
                host=c["host"],
                from_host=c["from_host"],
                app=c["app"],
                before=c["before"],
                after=c["after"],
                diff=tuple(_diff_item(i) for i in c["diff"]),
                replace_mode=P.ReplaceMode(c["replace_mode"]) if c["replace_mode"] else None,
                drift=bool(c["drift"]),
            )
            for c in raw["changes"]
        )
        steps = tuple(
            P.Step(
                id=s["id"],
                address=s["address"],
                host=s["host"],
                kind=resources.Kind(s["kind"]),
                resource_id=s["resource_id"],
                verb=P.Verb(s["verb"]),
                spec=s["spec"],
                etag=s["etag"],
                expect=s["expect"],
                deps=tuple(s["deps"]),
                gate=P.Gate(s["gate"]["min_healthy_s"], s["gate"]["deadline_s"])
                if s["gate"]
                else None,
                app=s["app"],
                batch=s["batch"],
            )
            for s in raw["steps"]
        )
        return P.Plan(
            fleet=P.FleetRef(
                raw["fleet"]["commit"], bool(raw["fleet"]["dirty"]), raw["fleet"]["ref"]
            ),
            observed_at=raw["observed"]["taken_at"],
            generations=raw["observed"]["generations"],
            options=P.Options(
                tuple(o["targets"]),
                tuple(o["excludes"]),
                float(o["max_destroy_share"]),
                bool(o["allow_mass_destroy"]),
                bool(o["allow_anycast_withdraw"]),
            ),
            changes=changes,
            steps=steps,
            noops=tuple(P.Noop(n["address"], n["reason"]) for n in raw["noops"]),
            unmanaged=tuple(
                P.Unmanaged(u["address"], u["host"], resources.Kind(u["kind"]), u["id"], u["owner"])
                for u in raw["unmanaged"]
            ),
            deferred=tuple(
                P.Deferred(d["address"], d["host"], d["reason"]) for d in raw["deferred"]
            ),
            warnings=tuple(P.Warning(w["address"], w["message"]) for w in raw["warnings"]),
            rollouts=tuple(
                P.Rollout(
                    r["app"],
                    r["strategy"],
                    r["batches"],
                    r["create_before_destroy"],
                    r["auto_revert"],
                )
                for r in raw["rollouts"]
            ),
            excluded=tuple(raw["excluded"]),
            created_at=raw.get("created_at", ""),
            inputs={str(h): str(d) for h, d in raw.get("inputs", {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FleetError(f"{source}: malformed plan: {type(exc).__name__}: {exc}") from exc


def loads(text: str, source: str = "plan") -> tuple[P.Plan, str]:
    """Parse a saved plan; also return its digest (the apply's identity in the journal)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FleetError(f"{source}: not JSON: {exc}") from exc
    return from_json(raw, source), digest_of(raw)
