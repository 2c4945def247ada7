"""The saved snapshot file (``reconcile observe --save``, ``plan --observed``). Pure.

:mod:`reconciler.core.observed` is what hosts report; this module is how a
snapshot of those reports is written to a file and read back, in each
``format_version`` the reconciler still reads:

1. every spec inline (what ``reconcile observe`` prints);
2. each distinct top-level spec value once, in a pool
   (:mod:`reconciler.core.specpool`);
3. 2, with each reachable host's resources as JSON *text* (``body``) beside a
   :class:`~reconciler.core.observed.Summary`, so that a plan skipping the host
   (:mod:`reconciler.core.skip`) never parses them;
4. (written now) 3 laid out so that a reader need not even scan what it
   skips: the host entries first, one a line; then each host's resources, one
   array a line, in the same order; then the pool, three lines (lists of
   objects, such as WireGuard peers, pooled item by item). It is one valid
   JSON document (``{"format_version": 4, "taken_at", "hosts", "bodies",
   "spec_keys", "spec_lists", "spec_values"}``), but :func:`loads` reads it by
   position: it splits the lines, parses the host entries and leaves every body
   and the pool as text until a plan needs them. A no-op plan of a 1,000-host
   snapshot so parses ~1 MiB of its 12 MiB. A file in any other layout (a
   pretty-printed copy, say) is read as plain JSON, to the same result.
"""

from __future__ import annotations

import functools
import json
from types import MappingProxyType

from fleet.errors import FleetError
from reconciler.core import observed, specpool
from reconciler.core.observed import Json

FORMAT_VERSION = 4
READABLE_FORMATS = (1, 2, 3, 4)

_DUMP = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"), default=observed.plain)
_NO_STATUS: dict[str, Json] = {"state": None, "health": "unknown", "runtime": {}}
_BODIES = b'],"bodies":['


def saved_json(s: observed.Snapshot, version: int = FORMAT_VERSION) -> dict[str, Json]:
    """The snapshot as the file holds it (``version`` 2, 3 or 4), as one JSON value.

    Each resource's ``spec`` becomes ``spec_ref``: the index of its key list in
    ``spec_keys``, then one index into ``spec_values`` per key (equal values,
    compared by their canonical JSON, are stored once). A status with nothing
    to say (no state, health unknown, no runtime) is left out. From format 3
    each reachable host also has a ``summary``; its resources are its ``body``
    (3: their JSON text) or its entry in ``bodies`` (4: an array, ``null`` for
    an unreachable host).
    """
    pool = specpool.Writer(observed.canonical, items=version >= 4)
    hosts: list[Json] = []
    bodies: list[Json] = []
    for name in sorted(s.hosts):
        obs = observed.decoded(s.hosts[name])
        answer = observed.host_to_json(obs)
        for raw in answer.get("resources", []):
            raw["spec_ref"] = pool.ref(raw.pop("spec"))
            if raw["status"] == _NO_STATUS:
                del raw["status"]
        if version >= 3 and obs.reachable:
            answer["summary"] = observed.summary_to_json(observed.summarize(obs))
            resources = answer.pop("resources")
            if version == 3:
                answer["body"] = _DUMP(resources)
            bodies.append(resources)
        elif version >= 4:
            bodies.append(None)
        hosts.append(answer)
    out: dict[str, Json] = {"format_version": version, "taken_at": s.taken_at, "hosts": hosts}
    if version >= 4:
        out["bodies"] = bodies
        out["spec_lists"] = pool.lists
    return out | {"spec_keys": pool.key_lists(), "spec_values": pool.values}


def dumps(snapshot: observed.Snapshot, version: int = FORMAT_VERSION) -> str:
    """The file's text: format 4 in its line layout (see the module docstring); 2 and 3
    compact, one host a line."""
    raw = saved_json(snapshot, version)
    hosts = [_DUMP(h) for h in raw.pop("hosts")]
    if version < 4:
        head = _DUMP(raw)
        return head[:-1] + ',"hosts":[\n' + ",\n".join(hosts) + "\n]}\n"
    bodies = [_DUMP(b) for b in raw["bodies"]]
    head = _DUMP({"format_version": version, "taken_at": raw["taken_at"]})
    return "\n".join(
        [
            head[:-1] + ',"hosts":[',
            *_commas(hosts),
            _BODIES.decode(),
            *_commas(bodies),
            '],"spec_keys":' + _DUMP(raw["spec_keys"]) + ",",
            '"spec_lists":' + _DUMP(raw["spec_lists"]) + ",",
            '"spec_values":' + _DUMP(raw["spec_values"]) + "}",
            "",
        ]
    )


def _commas(lines: list[str]) -> list[str]:
    return [line + "," for line in lines[:-1]] + lines[-1:]


def loads(data: str | bytes, source: str = "snapshot", *, lazy: bool = False) -> observed.Snapshot:
    """Parse a saved snapshot (its text, or better its bytes: what the plan skips is
    then never even decoded); ``lazy``: bodies of format 3 and 4 stay unparsed (for
    the planner)."""
    raw_bytes = data.encode() if isinstance(data, str) else data
    fast = _lines(raw_bytes, source, lazy)
    if fast is not None:
        return fast
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise FleetError(f"{source}: not JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise FleetError(f"{source}: not UTF-8 text: {exc}") from exc
    return from_json(raw, source, lazy=lazy)


def from_json(raw: Json, source: str = "snapshot", *, lazy: bool = False) -> observed.Snapshot:
    """A snapshot from the file's JSON value (any readable format)."""
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_FORMATS or type(version) is not int:
        raise FleetError(
            f"{source}: not an observed-state snapshot of format_version "
            f"{' or '.join(map(str, READABLE_FORMATS))} (found {version!r})"
        )
    hosts_raw = raw.get("hosts")
    if not isinstance(hosts_raw, list):
        raise FleetError(f"{source}: $.hosts: expected an array")
    pool = specpool.read(raw, source) if version >= 2 else None
    if version < 4:
        return _snapshot(
            raw, source, [observed.host_from_json(a, pool=pool, lazy=lazy) for a in hosts_raw]
        )
    bodies = raw.get("bodies")
    if not isinstance(bodies, list) or len(bodies) != len(hosts_raw):
        raise FleetError(f"{source}: $.bodies: expected an array, one entry per host")
    return _snapshot(
        raw,
        source,
        [
            observed.saved_host(a, None if b is None else _DUMP(b), lambda: pool, lazy=lazy)
            for a, b in zip(hosts_raw, bodies, strict=True)
        ],
    )


def _lines(data: bytes, source: str, lazy: bool) -> observed.Snapshot | None:
    """A format-4 file in the layout :func:`dumps` writes, read by position; None if
    it is laid out otherwise (or is not what it seems: :func:`loads` then parses it
    as JSON, which names any error's line and column).

    Only the host entries are copied out of ``data``; each body stays a view into it
    (copied when decoded), and the pool's three lines are parsed as one JSON object
    when a spec is first read (the line breaks between them are JSON whitespace).
    """
    if not data.startswith(b'{"format_version":4,'):
        return None
    ends = []  # where each line ends (its "\n", or the end of the data)
    find, at = data.find, data.find(b"\n")
    while at >= 0:
        ends.append(at)
        at = find(b"\n", at + 1)
    ends.append(len(data))
    starts = [0, *(e + 1 for e in ends[:-1])]
    n, odd = divmod(len(ends) - 6, 2)
    if odd or n < 0:
        return None
    keys, lists, values = 2 * n + 2, 2 * n + 3, 2 * n + 4

    def line(i: int, begins: bytes, ends_with: bytes = b"") -> bool:
        return data.startswith(begins, starts[i], ends[i]) and data.endswith(
            ends_with, starts[i], ends[i]
        )

    if not (
        line(0, b'{"format_version":4,', b'"hosts":[')
        and data[starts[n + 1] : ends[n + 1]] == _BODIES
        and line(keys, b'],"spec_keys":', b",")
        and line(lists, b'"spec_lists":', b",")
        and line(values, b'"spec_values":', b"}")
        and starts[-1] == ends[-1]  # the file ends with a line break
    ):
        return None
    try:
        head = json.loads(data[: ends[0]] + b"]}")
        # the host entries' lines with their commas are an array's items: one parse
        hosts_raw = json.loads(b"[" + data[starts[1] : ends[n]] + b"]") if n else []
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if type(hosts_raw) is not list or len(hosts_raw) != n:
        return None
    view = memoryview(data)
    bodies = [view[starts[i] : _end(data, ends[i])] for i in range(n + 2, 2 * n + 2)]

    @functools.cache
    def pool() -> specpool.SpecPool:
        try:
            raw = json.loads(b"{" + data[starts[keys] + 2 : ends[values]])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FleetError(
                f"{source}: spec pool (lines {keys + 1}-{values + 1}): not JSON: {exc}"
            ) from exc
        return specpool.read(raw, source)

    return _snapshot(
        head,
        source,
        [
            observed.saved_host(a, None if len(b) == 4 and b == _NULL else b, pool, lazy=lazy)
            for a, b in zip(hosts_raw, bodies, strict=True)
        ],
    )


_NULL = memoryview(b"null")


def _end(data: bytes, end: int) -> int:
    """A line's end without its separating comma."""
    return end - 1 if data[end - 1 : end] == b"," else end


def _snapshot(raw: Json, source: str, hosts: list[observed.HostObservation]) -> observed.Snapshot:
    by_name: dict[str, observed.HostObservation] = {}
    for obs in hosts:
        if obs.host in by_name:
            raise FleetError(f"{source}: host {obs.host!r} appears twice")
        by_name[obs.host] = obs
    taken_at = raw.get("taken_at", "")
    return observed.Snapshot(
        hosts=MappingProxyType(by_name),
        taken_at=str(taken_at or ""),
    )
