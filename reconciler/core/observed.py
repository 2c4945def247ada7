"""What hosts report: the observed-state model and its versioned JSON form.

Pure. This is the ``observe`` answer of the host agent protocol (see
docs/protocol.md and ``schemas/observed.json``) and the format of a saved
snapshot (``reconcile observe --save``). JSON is parsed once, here, into frozen
objects; a malformed answer is a :class:`~fleet.errors.ProtocolError` naming the
host and the JSON path.

Every resource carries its kind, id, owner (``fleet`` when the reconciler
manages it), the spec it was last applied with and that spec's etag (the agent
stores the etag the reconciler sent and never computes one for a managed
resource), an optional ``actual`` block (live configuration as read back, for
drift) and a runtime status. ``status.runtime`` holds pids, uptime and the
like: kept for display, never compared.

A saved snapshot (``reconcile observe --save``) holds these answers; its file
formats are :mod:`reconciler.core.snapfile`'s. Two things here serve it: a
resource's spec may be a pooled one (:mod:`reconciler.core.specpool`), decoded
only when read, and a host may hold its resources still as JSON text beside a
:class:`Summary` (:class:`Lazy`), so that a plan that skips the host
(:mod:`reconciler.core.skip`) never parses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from fleet.errors import ProtocolError
from providers import resources
from reconciler.core import address, frozen, specpool

PROTOCOL_VERSION = 1  # the agent protocol (observe answer, apply request/events/result)
OWNER_FLEET = "fleet"

Json = Any
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class RunState(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


class Health(StrEnum):
    PASSING = "passing"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


def plain(value: Any) -> Any:
    """``default=`` for json: any other Mapping (a pooled spec, a mapping proxy) as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encoder(default: Callable[[Any], Any]) -> json.JSONEncoder:
    """A canonical JSON encoder (sorted keys, no spaces, UTF-8) with its own ``default``."""
    return json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default
    )


# What ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
# builds on every call; made once (an encoder keeps no state between calls).
_CANONICAL = encoder(plain)


def canonical(value: Json) -> str:
    """The canonical JSON text of a value: sorted keys, no spaces, UTF-8."""
    return _CANONICAL.encode(value)


def etag(spec: Json) -> str:
    """The etag the reconciler gives a spec: a short digest of its canonical JSON."""
    return digest_text(canonical(spec))


def digest_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Status:
    state: RunState | None = None
    health: Health = Health.UNKNOWN
    runtime: Mapping[str, Json] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Resource:
    kind: resources.Kind
    id: str
    owner: str
    etag: str
    spec: Mapping[str, Json]
    status: Status = Status()
    actual: Mapping[str, Json] | None = None

    @property
    def managed(self) -> bool:
        return self.owner == OWNER_FLEET


@dataclass(frozen=True, slots=True)
class Facts:
    cpus: int = 0
    memory_mb: int = 0
    gpus: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    hypervisor: str = ""
    agent_version: str = ""
    private_prefix: str | None = None
    # The resource kinds the host's agent manages; empty means "all" (older
    # agents and saved snapshots did not say).
    kinds: tuple[str, ...] = ()
    # The public half of the host's WireGuard key (None: not reported yet).
    wireguard_public_key: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """What a plan needs of a host it may skip wholesale (:mod:`reconciler.core.skip`).

    Made from the host's resources (:func:`summarize`) when a snapshot is saved
    (formats 3 and 4) and read back without the resources themselves.
    """

    settled: bool  # every managed resource would plan as a plain no-op if its etag matches
    machines: tuple[tuple[str, str], ...]  # managed machines: ("app/slot", etag)
    others: tuple[tuple[str, str], ...]  # other managed resources: (kind, id)
    unmanaged: int
    anycast: tuple[tuple[str, tuple[str, ...]], ...]  # managed announcements: (app, prefixes)


@dataclass(frozen=True, slots=True)
class Lazy:
    """A saved host's resources, still as the JSON text of its saved body (formats 3, 4)."""

    summary: Summary
    body: str | bytes | memoryview  # the JSON text of the host's resources array
    pool: Callable[[], specpool.SpecPool | None] = field(compare=False)  # read on first use


@dataclass(frozen=True, slots=True)
class HostObservation:
    """One host's observe answer, or the reason it could not be observed.

    ``inputs``: the inputs digest the reconciler last recorded on the host
    (:mod:`reconciler.core.inputs`); None when the agent does not keep one,
    "" when it keeps none now. ``lazy``: set only by ``snapfile.loads(..., lazy=True)``
    of a format-3 or 4 file, ``resources`` then empty until :func:`decoded`.
    """

    host: str
    reachable: bool
    generation: int = 0
    facts: Facts = Facts()
    resources: tuple[Resource, ...] = ()
    error: str = ""
    inputs: str | None = None
    lazy: Lazy | None = None

    @staticmethod
    def unreachable(host: str, error: str) -> HostObservation:
        return HostObservation(host=host, reachable=False, error=error)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Observations of every host, as of ``taken_at`` (ISO 8601, UTC)."""

    hosts: Mapping[str, HostObservation]
    taken_at: str = ""

    def generations(self) -> dict[str, int]:
        return {h: o.generation for h, o in sorted(self.hosts.items()) if o.reachable}


# ------------------------------------------------------------------ to JSON


def resource_to_json(r: Resource) -> dict[str, Json]:
    out: dict[str, Json] = {
        "kind": r.kind.value,
        "id": r.id,
        "owner": r.owner,
        "etag": r.etag,
        "spec": r.spec if type(r.spec) is dict else dict(r.spec),
        "status": {
            "state": r.status.state.value if r.status.state else None,
            "health": r.status.health.value,
            "runtime": dict(r.status.runtime),
        },
    }
    if r.actual is not None:
        out["actual"] = r.actual
    return out


def host_to_json(o: HostObservation) -> dict[str, Json]:
    """The agent's observe answer (``protocol_version`` 1)."""
    if not o.reachable:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "host": o.host,
            "reachable": False,
            "error": o.error,
        }
    return {
        "protocol_version": PROTOCOL_VERSION,
        "host": o.host,
        "reachable": True,
        "generation": o.generation,
        "facts": {
            "cpus": o.facts.cpus,
            "memory_mb": o.facts.memory_mb,
            "gpus": dict(o.facts.gpus),
            "hypervisor": o.facts.hypervisor,
            "agent_version": o.facts.agent_version,
            "private_prefix": o.facts.private_prefix,
            **({"kinds": list(o.facts.kinds)} if o.facts.kinds else {}),
            **(
                {"wireguard_public_key": o.facts.wireguard_public_key}
                if o.facts.wireguard_public_key
                else {}
            ),
        },
        "resources": [resource_to_json(r) for r in o.resources],
        **({"inputs_digest": o.inputs} if o.inputs is not None else {}),
    }


def snapshot_to_json(s: Snapshot) -> dict[str, Json]:
    """Every spec inline (``format_version`` 1): what ``reconcile observe`` prints."""
    return {
        "format_version": 1,
        "taken_at": s.taken_at,
        "hosts": [host_to_json(s.hosts[name]) for name in sorted(s.hosts)],
    }


_NO_STATUS: dict[str, Json] = {"state": None, "health": "unknown", "runtime": {}}
_STOPPED = (RunState.STOPPED, RunState.FAILED)


def summarize(o: HostObservation) -> Summary:
    """The :class:`Summary` of a reachable host's resources.

    ``settled`` is the planner's own test, resource by resource, of "a plain
    no-op when the etag matches": a machine neither stopped, failed nor failing
    its health checks; any other kind without live drift (``actual`` equal to
    the spec but for runtime fields, or a kind whose drift is ignored); an
    announcement whose spec is the usual ``app`` + ``prefixes``. Anything else
    leaves the host to the full per-resource path.
    """
    settled = True
    machines: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    anycast: list[tuple[str, tuple[str, ...]]] = []
    unmanaged = 0
    if o.lazy is not None:
        return o.lazy.summary
    for r in o.resources:
        if r.owner != OWNER_FLEET:
            unmanaged += 1
            continue
        if r.kind is resources.Kind.MACHINE:
            app, slot = address.machine_slot(r.id, r.spec)
            machines.append((f"{app}/{slot}", r.etag))
            if r.status.state in _STOPPED or r.status.health is Health.CRITICAL:
                settled = False
            continue
        others.append((r.kind.value, r.id))
        settled = settled and not _drifts(r)
        if r.kind is resources.Kind.ANNOUNCEMENT:
            app_name, prefixes = r.spec.get("app"), r.spec.get("prefixes")
            if (
                type(app_name) is str
                and app_name
                and type(prefixes) is list
                and prefixes
                and all(type(p) is str for p in prefixes)
            ):
                anycast.append((app_name, tuple(prefixes)))
                continue
            settled = False
    return Summary(settled, tuple(machines), tuple(others), unmanaged, tuple(anycast))


def _drifts(r: Resource) -> bool:
    """Whether the planner could see drift in ``r`` (its ``_drift``, without the diff)."""
    rules = resources.rules(r.kind)
    if r.actual is None or rules.drift is resources.DriftPolicy.IGNORE:
        return False
    runtime = rules.runtime_fields
    live = {k: v for k, v in r.actual.items() if k not in runtime}
    spec = {k: v for k, v in r.spec.items() if k not in runtime}
    return canonical(live) != canonical(spec)


def summary_to_json(s: Summary) -> dict[str, Json]:
    return {
        "settled": s.settled,
        "machines": [text for m in s.machines for text in m],  # flat: slot, etag, slot...
        "others": [text for x in s.others for text in x],  # flat: kind, id, kind...
        "unmanaged": s.unmanaged,
        "anycast": [[app, list(prefixes)] for app, prefixes in s.anycast],
    }


# ------------------------------------------------------------------ from JSON


class _Reader:
    """Typed access into one host's answer; errors name the host and the JSON path."""

    def __init__(self, host: str) -> None:
        self.host = host

    def fail(self, path: str, message: str) -> ProtocolError:
        return ProtocolError(self.host, f"observe answer: {path}: {message}")

    def get(self, obj: Json, key: str, typ: type | tuple[type, ...], path: str) -> Json:
        if not isinstance(obj, dict):
            raise self.fail(path, "expected an object")
        if key not in obj:
            raise self.fail(f"{path}.{key}", "missing")
        value = obj[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise self.fail(f"{path}.{key}", f"expected {_type_name(typ)}")
        return value

    def opt(
        self, obj: Json, key: str, typ: type | tuple[type, ...], path: str, default: Json
    ) -> Json:
        if key not in obj or obj[key] is None:
            return default
        return self.get(obj, key, typ, path)


def _type_name(typ: type | tuple[type, ...]) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        int: "an integer",
        bool: "a boolean",
    }
    if isinstance(typ, tuple):
        return " or ".join(names.get(t, t.__name__) for t in typ)
    return names.get(typ, typ.__name__)


def _spec(rd: _Reader, raw: Json, path: str, pool: specpool.SpecPool | None) -> Mapping[str, Json]:
    if pool is not None and isinstance(raw, dict) and "spec" not in raw:
        return specpool.PooledSpec(pool, rd.get(raw, "spec_ref", str, path))
    return rd.get(raw, "spec", dict, path)  # type: ignore[no-any-return]


def _resource(rd: _Reader, raw: Json, path: str, pool: specpool.SpecPool | None = None) -> Resource:
    try:
        kind = resources.Kind(rd.get(raw, "kind", str, path))
    except ValueError:
        raise rd.fail(f"{path}.kind", f"unknown kind {raw.get('kind')!r}") from None
    status_raw = rd.opt(raw, "status", dict, path, {})
    state_raw = rd.opt(status_raw, "state", str, f"{path}.status", None)
    try:
        state = RunState(state_raw) if state_raw is not None else None
        health = Health(rd.opt(status_raw, "health", str, f"{path}.status", "unknown"))
    except ValueError as exc:
        raise rd.fail(f"{path}.status", str(exc)) from None
    runtime = rd.opt(status_raw, "runtime", dict, f"{path}.status", {})
    actual = rd.opt(raw, "actual", dict, path, None)
    return Resource(
        kind=kind,
        id=rd.get(raw, "id", str, path),
        owner=rd.get(raw, "owner", str, path),
        etag=rd.get(raw, "etag", str, path),
        spec=_spec(rd, raw, path, pool),
        status=Status(state, health, runtime),
        actual=actual,
    )


# Building a frozen slotted dataclass through its __init__ costs a lookup of
# object.__setattr__ per field; a snapshot builds 80,000 of them. The parser's
# fast path sets the slots through their descriptors instead (the same effect:
# neither class has a __post_init__). The field lists are checked at import.
_new = object.__new__
_RESOURCE_FIELDS = ("kind", "id", "owner", "etag", "spec", "status", "actual")
_STATUS_FIELDS = ("state", "health", "runtime")
assert tuple(f.name for f in fields(Resource)) == _RESOURCE_FIELDS
assert tuple(f.name for f in fields(Status)) == _STATUS_FIELDS
assert not hasattr(Resource, "__post_init__") and not hasattr(Status, "__post_init__")
_r_kind, _r_id, _r_owner, _r_etag, _r_spec, _r_status, _r_actual = (
    Resource.__dict__[n].__set__ for n in _RESOURCE_FIELDS
)
_s_state, _s_health, _s_runtime = (Status.__dict__[n].__set__ for n in _STATUS_FIELDS)


def _make_status(state: RunState | None, health: Health, runtime: Mapping[str, Json]) -> Status:
    """``Status(state, health, runtime)``, faster."""
    s = _new(Status)
    _s_state(s, state)
    _s_health(s, health)
    _s_runtime(s, runtime)
    return s


_KINDS: Mapping[str, resources.Kind] = {k.value: k for k in resources.Kind}
_STATES: Mapping[str, RunState] = {s.value: s for s in RunState}
_HEALTHS: Mapping[str, Health] = {h.value: h for h in Health}


_PooledSpec = specpool.PooledSpec
_new_pooled = _PooledSpec.__new__
_p_at, _p_dict, _p_pool, _p_ref, _p_refs = (
    _PooledSpec.__dict__[n].__set__ for n in ("_at", "_dict", "_pool", "_ref", "_refs")
)
_DEFAULT_STATUS = Status()  # frozen: one shared by every resource that reports none


def _resource_fast(raw: Json, pool: specpool.SpecPool | None = None) -> Resource | None:
    """``_resource`` for a well-formed answer as ``json.loads`` gives it; None otherwise.

    A snapshot holds tens of thousands of resources: this checks the exact types
    ``json.loads`` produces with a few ``type() is`` tests instead of a generic
    checker per field. Anything unusual (a missing key, a subclass, an unknown
    enum value) returns None and the caller takes the slow path, which names the
    JSON path of the error, so results and errors are those of ``_resource``.
    """
    if type(raw) is not dict:
        return None
    get = raw.get
    kind_raw = get("kind")
    kind = _KINDS.get(kind_raw) if type(kind_raw) is str else None
    rid = get("id")
    owner = get("owner")
    tag = get("etag")
    spec = get("spec")
    if spec is None and pool is not None:
        ref = get("spec_ref")
        if type(ref) is not str:
            return None
        spec = pool.specs.get(ref)  # equal specs share one PooledSpec (read-only, decoded once)
        if spec is None:
            spec = pool.specs[ref] = _new_pooled(_PooledSpec)  # PooledSpec(pool, ref), faster
            _p_pool(spec, pool)
            _p_ref(spec, ref)
            _p_refs(spec, None)
            _p_at(spec, None)
            _p_dict(spec, None)
    status_raw = get("status")
    actual = get("actual")
    if (
        kind is None
        or type(rid) is not str
        or type(owner) is not str
        or type(tag) is not str
        or (type(spec) is not dict and type(spec) is not _PooledSpec)
        or (actual is not None and type(actual) is not dict)
    ):
        return None
    if status_raw is None:
        status = _DEFAULT_STATUS
    else:
        if type(status_raw) is not dict:
            return None
        state_raw = status_raw.get("state")
        health_raw = status_raw.get("health")
        runtime = status_raw.get("runtime")
        state = None
        if state_raw is not None:
            state = _STATES.get(state_raw) if type(state_raw) is str else None
            if state is None:
                return None
        if health_raw is None:
            health = Health.UNKNOWN
        elif type(health_raw) is str and health_raw in _HEALTHS:
            health = _HEALTHS[health_raw]
        else:
            return None
        if runtime is None:
            runtime = {}
        elif type(runtime) is not dict:
            return None
        status = _make_status(state, health, runtime)
    r = _new(Resource)  # Resource(kind, rid, owner, tag, spec, status, actual), faster
    _r_kind(r, kind)
    _r_id(r, rid)
    _r_owner(r, owner)
    _r_etag(r, tag)
    _r_spec(r, spec)
    _r_status(r, status)
    _r_actual(r, actual)
    return r


def _resources(
    rd: _Reader, raw_resources: list[Json], pool: specpool.SpecPool | None
) -> tuple[Resource, ...]:
    out = [_resource_fast(r, pool) for r in raw_resources]
    if not all(out):  # something unusual (a None): the slow path says what, where
        out = [
            res if res is not None else _resource(rd, raw_resources[i], f"$.resources[{i}]", pool)
            for i, res in enumerate(out)
        ]
    return tuple(out)  # type: ignore[arg-type]


def host_from_json(
    raw: Json,
    expect_host: str | None = None,
    pool: specpool.SpecPool | None = None,
    *,
    lazy: bool = False,
) -> HostObservation:
    """Parse one observe answer; ``expect_host`` checks the agent answered for the right host.

    ``pool``: the saved snapshot's spec pool, whose resources carry ``spec_ref``
    instead of ``spec`` (never in an answer from an agent). A saved format-3
    host has ``summary`` and ``body`` instead of ``resources``: parsed now, or
    with ``lazy`` kept as text (:class:`Lazy`) until :func:`decoded`.
    """
    rd, head = _head(raw, expect_host)
    if not head.reachable:
        return head
    if pool is not None and "body" in raw:
        body = rd.get(raw, "body", str, "$")
        return _saved_body(rd, head, raw, body, lambda: pool, lazy=lazy)
    return _with(head, _resources(rd, rd.get(raw, "resources", list, "$"), pool))


def saved_host(
    raw: Json,
    body: str | bytes | memoryview | None,
    pool: Callable[[], specpool.SpecPool | None],
    *,
    lazy: bool,
) -> HostObservation:
    """A host of a saved format-4 snapshot: its entry (the answer without ``resources``,
    with ``summary``) and ``body``, the JSON text of its resources (None if unreachable).

    ``lazy``: the body stays text (:class:`Lazy`) until :func:`decoded`;
    ``pool`` gives the snapshot's spec pool when a body is decoded.
    """
    if lazy and body is not None and type(raw) is dict:  # the common case, at once
        fast = _head_fast(raw)
        summary = _summary_fast(raw.get("summary")) if fast is not None else None
        if fast is not None and summary is not None:
            host, generation, facts, inputs = fast
            return _make_host(
                host, True, generation, facts, (), "", inputs, _make_lazy(summary, body, pool)
            )
    rd, head = _head(raw, None)
    if not head.reachable:
        return head
    if body is None:
        raise rd.fail("$", "a reachable host without its resources")
    return _saved_body(rd, head, raw, body, pool, lazy=lazy)


def _saved_body(
    rd: _Reader,
    head: HostObservation,
    raw: Json,
    body: str | bytes | memoryview,
    pool: Callable[[], specpool.SpecPool | None],
    *,
    lazy: bool,
) -> HostObservation:
    summary = _summary_fast(raw.get("summary")) or _summary(rd, rd.get(raw, "summary", dict, "$"))
    if lazy:
        return _with(head, (), Lazy(summary, body, pool))
    return _with(head, _body(rd, body, pool()))


def _with(
    head: HostObservation, parsed: tuple[Resource, ...], lazy: Lazy | None = None
) -> HostObservation:
    return HostObservation(
        head.host, True, head.generation, head.facts, parsed, inputs=head.inputs, lazy=lazy
    )


def _head(raw: Json, expect_host: str | None) -> tuple[_Reader, HostObservation]:
    """The answer without its resources, and a reader naming its host in errors."""
    name = raw.get("host") if isinstance(raw, dict) else None
    rd = _Reader(expect_host or (name if isinstance(name, str) else "?"))
    fast = _head_fast(raw)
    if fast is not None and (expect_host is None or fast[0] == expect_host):
        host, generation, facts, inputs = fast
        return rd, HostObservation(host, True, generation, facts, inputs=inputs)
    version = rd.get(raw, "protocol_version", int, "$")
    if version != PROTOCOL_VERSION:
        raise rd.fail(
            "$.protocol_version",
            f"agent speaks protocol {version}, this reconciler {PROTOCOL_VERSION}: "
            "re-bootstrap the host (reconcile hosts bootstrap)",
        )
    host = rd.get(raw, "host", str, "$")
    if expect_host is not None and host != expect_host:
        raise rd.fail("$.host", f"answer is for host {host!r}")
    if not rd.opt(raw, "reachable", bool, "$", True):
        return rd, HostObservation.unreachable(host, rd.opt(raw, "error", str, "$", "unreachable"))
    facts_raw = rd.opt(raw, "facts", dict, "$", {})
    gpus = rd.opt(facts_raw, "gpus", dict, "$.facts", {})
    facts = Facts(
        cpus=rd.opt(facts_raw, "cpus", int, "$.facts", 0),
        memory_mb=rd.opt(facts_raw, "memory_mb", int, "$.facts", 0),
        gpus=MappingProxyType({str(k): int(v) for k, v in gpus.items()}),
        hypervisor=rd.opt(facts_raw, "hypervisor", str, "$.facts", ""),
        agent_version=rd.opt(facts_raw, "agent_version", str, "$.facts", ""),
        private_prefix=rd.opt(facts_raw, "private_prefix", str, "$.facts", None),
        kinds=tuple(str(k) for k in rd.opt(facts_raw, "kinds", list, "$.facts", [])),
        wireguard_public_key=rd.opt(facts_raw, "wireguard_public_key", str, "$.facts", None),
    )
    inputs = rd.opt(raw, "inputs_digest", str, "$", None)
    generation = rd.get(raw, "generation", int, "$")
    return rd, HostObservation(host, True, generation, facts, inputs=inputs)


def _of(value: Any, typ: type, default: Any) -> Any:
    """``value`` if exactly of ``typ``, ``default`` if None (absent); else ``_BAD``."""
    if value is None:
        return default
    return value if type(value) is typ else _BAD


_BAD: Any = object()


def _head_fast(raw: Json) -> tuple[str, int, Facts, str | None] | None:
    """``_head`` of a well-formed reachable answer, with exact-type checks; None otherwise.

    Like :func:`_resource_fast`: anything unusual takes the slow path, which
    gives the same result or names the JSON path of the error.
    """
    if type(raw) is not dict:
        return None
    get = raw.get
    facts_raw = get("facts", {})
    if (
        get("protocol_version") != PROTOCOL_VERSION
        or type(get("protocol_version")) is not int
        or get("reachable", True) is not True
        or type(facts_raw) is not dict
    ):
        return None
    host, generation = get("host"), get("generation")
    inputs = _of(get("inputs_digest"), str, None)
    f = facts_raw.get
    gpus = _of(f("gpus"), dict, {})
    kinds = _of(f("kinds"), list, [])
    values = (
        _of(f("cpus"), int, 0),
        _of(f("memory_mb"), int, 0),
        _of(f("hypervisor"), str, ""),
        _of(f("agent_version"), str, ""),
        _of(f("private_prefix"), str, None),
        _of(f("wireguard_public_key"), str, None),
    )
    if (
        type(host) is not str
        or type(generation) is not int
        or inputs is _BAD
        or gpus is _BAD
        or kinds is _BAD
        or _BAD in values
        or not all(type(k) is str and type(v) is int for k, v in gpus.items())
        or not all(type(k) is str for k in kinds)
    ):
        return None
    cpus, memory_mb, hypervisor, agent_version, private_prefix, wg_key = values
    facts = _make_facts(
        cpus,
        memory_mb,
        MappingProxyType(dict(gpus)),
        hypervisor,
        agent_version,
        private_prefix,
        tuple(kinds),
        wg_key,
    )
    return host, generation, facts, inputs


def _body(
    rd: _Reader, body: str | bytes | memoryview, pool: specpool.SpecPool | None
) -> tuple[Resource, ...]:
    try:
        raw_resources = json.loads(body.tobytes() if isinstance(body, memoryview) else body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise rd.fail("$.body", f"not JSON: {exc}") from None
    if type(raw_resources) is not list:
        raise rd.fail("$.body", "expected an array")
    return _resources(rd, raw_resources, pool)


_STR = {str}


def _pairs(rd: _Reader, raw: Json, path: str) -> tuple[tuple[str, str], ...]:
    """A flat array of strings, two by two."""
    if type(raw) is not list or len(raw) % 2 or not set(map(type, raw)) <= _STR:
        raise rd.fail(path, "expected an array of strings, two per item")
    return tuple(zip(raw[::2], raw[1::2], strict=True))


def _summary(rd: _Reader, raw: Json) -> Summary:
    anycast = rd.get(raw, "anycast", list, "$.summary")
    if not all(
        type(a) is list
        and len(a) == 2
        and type(a[0]) is str
        and type(a[1]) is list
        and set(map(type, a[1])) <= _STR
        for a in anycast
    ):
        raise rd.fail("$.summary.anycast", "expected an array of [app, [prefix...]]")
    return Summary(
        settled=rd.get(raw, "settled", bool, "$.summary"),
        machines=_pairs(rd, raw.get("machines"), "$.summary.machines"),
        others=_pairs(rd, raw.get("others"), "$.summary.others"),
        unmanaged=rd.get(raw, "unmanaged", int, "$.summary"),
        anycast=tuple((a, tuple(p)) for a, p in anycast),
    )


def _summary_fast(raw: Json) -> Summary | None:
    """``_summary`` of a well-formed summary, with exact-type checks; None otherwise."""
    if type(raw) is not dict:
        return None
    settled, machines, others = raw.get("settled"), raw.get("machines"), raw.get("others")
    unmanaged, anycast = raw.get("unmanaged"), raw.get("anycast")
    if (
        type(settled) is not bool
        or type(unmanaged) is not int
        or type(machines) is not list
        or type(others) is not list
        or type(anycast) is not list
        or len(machines) % 2
        or len(others) % 2
        or not set(map(type, machines)) <= _STR
        or not set(map(type, others)) <= _STR
    ):
        return None
    pairs = []
    for a in anycast:
        if type(a) is not list or len(a) != 2:
            return None
        app, prefixes = a
        if type(app) is not str or type(prefixes) is not list:
            return None
        if not set(map(type, prefixes)) <= _STR:
            return None
        pairs.append((app, tuple(prefixes)))
    return _make_summary(
        settled,
        _two_by_two(machines),
        _two_by_two(others),
        unmanaged,
        tuple(pairs),
    )


def _two_by_two(items: list[str]) -> tuple[tuple[str, str], ...]:
    """A flat list of even length, in pairs (one iterator zipped with itself: no slices)."""
    it = iter(items)
    return tuple(zip(it, it, strict=True))


# A saved snapshot's reader builds one of each per host (frozen.maker: the same objects).
_make_host = frozen.maker(HostObservation)
_make_facts = frozen.maker(Facts)
_make_summary = frozen.maker(Summary)
_make_lazy = frozen.maker(Lazy)


def decoded(o: HostObservation) -> HostObservation:
    """``o`` with its resources parsed (itself when they are already)."""
    if o.lazy is None:
        return o
    parsed = _body(_Reader(o.host), o.lazy.body, o.lazy.pool())
    return dataclasses.replace(o, resources=parsed, lazy=None)
