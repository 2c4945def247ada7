"""The spec pool of a saved snapshot (``format_version`` 2-4): each spec value once, specs by index.

Pure. A fleet's machines of one app share every spec field but their slot,
region and address, so a saved snapshot stores each distinct top-level spec
value once (``spec_values``), each spec's key list once (``spec_keys``), and
each resource's spec as a ``spec_ref`` string: the index of its key list, then
one value index per key. :class:`PooledSpec` is such a spec, decoded on first
use: a no-op plan compares etags and reads only the ``app`` and ``slot`` of
each machine. From format 4 a list of objects may be pooled item by item
(``*N`` instead of a value index; ``spec_lists[N]`` names its items): every
host's WireGuard peer list is the fleet's hosts but itself, so pooled whole
1,000 hosts' lists were 160 MiB, item by item ~5 MiB.
:mod:`reconciler.core.snapfile` reads and writes the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.errors import FleetError

Json = Any


@dataclass(frozen=True, slots=True)
class SpecPool:
    """A saved snapshot's ``spec_keys`` and ``spec_values``: what :class:`PooledSpec` indexes."""

    source: str
    keys: tuple[tuple[str, ...], ...]
    values: list[Json]
    lists: list[str]  # format 4: lists of pooled items, each its items' value indexes
    positions: tuple[Mapping[str, int], ...]  # per key list: key -> its place in a spec_ref
    # spec_ref -> its one PooledSpec: resources with equal specs (an app's announcement
    # on every edge host, a region's route on each of its edges) share one, decoded once
    specs: dict[str, PooledSpec]
    made: dict[int, list[Json]]  # the lists of pooled items made so far, by index

    @staticmethod
    def of(
        source: str,
        keys: tuple[tuple[str, ...], ...],
        values: list[Json],
        lists: list[str] | None = None,
    ) -> SpecPool:
        at = tuple({k: i for i, k in enumerate(ks, start=1)} for ks in keys)
        return SpecPool(source, keys, values, lists or [], at, {}, {})


class PooledSpec(Mapping[str, Json]):
    """A last-applied spec as a saved snapshot stores it: ``"K V1 V2 ..."``, decoded on first use.

    ``K`` indexes the pool's key lists, each ``Vi`` its values (one per key, in
    order). Reading one key (the planner reads ``app`` and ``slot`` of every
    machine) decodes only that value; anything else decodes the whole spec
    once. A malformed reference is a :class:`~fleet.errors.FleetError` naming
    the file, raised when the spec is first read.
    """

    __slots__ = ("_at", "_dict", "_pool", "_ref", "_refs")

    def __init__(self, pool: SpecPool, ref: str) -> None:
        self._pool = pool
        self._ref = ref
        self._refs: list[str] | None = None  # the reference, split
        self._at: Mapping[str, int] | None = None  # key -> its place in _refs
        self._dict: dict[str, Json] | None = None

    def _bad(self) -> FleetError:
        return FleetError(
            f"{self._pool.source}: spec_ref {self._ref!r} does not index spec_keys and "
            "spec_values (a damaged snapshot: save it again)"
        )

    def _parts(self) -> list[str]:
        """The reference split, its key list checked; values are checked as they are read."""
        parts = self._refs
        if parts is None:
            parts = self._ref.split()
            keys = self._pool.keys
            try:
                k = int(parts[0])
                ok = 0 <= k < len(keys) and len(parts) == len(keys[k]) + 1
            except (IndexError, ValueError):
                ok = False
            if not ok:
                raise self._bad()
            self._refs = parts
            self._at = self._pool.positions[k]
        return parts

    def _value(self, ref: str) -> Json:
        if ref[:1] == "*":
            return self._list(ref[1:])
        return self._item(ref)

    def _item(self, ref: str) -> Json:
        values = self._pool.values
        try:
            i = int(ref)
        except ValueError:
            raise self._bad() from None
        if not 0 <= i < len(values):
            raise self._bad()
        return values[i]

    def _list(self, ref: str) -> list[Json]:
        """``*N``: the list ``spec_lists[N]`` names, item by item (made once per pool)."""
        pool = self._pool
        try:
            n = int(ref)
        except ValueError:
            raise self._bad() from None
        made = pool.made.get(n)
        if made is None:
            if not 0 <= n < len(pool.lists):  # each a string: read() checks
                raise self._bad()
            made = pool.made[n] = [self._item(i) for i in pool.lists[n].split()]
        return made

    def decoded(self) -> dict[str, Json]:
        """The spec as a plain dict (made once)."""
        d = self._dict
        if d is None:
            parts = self._parts()
            keys = self._pool.keys[int(parts[0])]
            d = self._dict = {k: self._value(v) for k, v in zip(keys, parts[1:], strict=True)}
        return d

    def get(self, key: str, default: Any = None) -> Any:
        d = self._dict
        if d is not None:
            return d.get(key, default)
        parts = self._refs
        if parts is None:
            parts = self._parts()
        at = self._at.get(key) if self._at is not None else None
        return default if at is None else self._value(parts[at])

    def __getitem__(self, key: str) -> Json:
        return self.decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.decoded())

    def __len__(self) -> int:
        return len(self.decoded())

    def __repr__(self) -> str:
        return repr(self.decoded())


def read(raw: Mapping[str, Json], source: str) -> SpecPool:
    """The pool of a saved snapshot's top level (``spec_keys``, ``spec_values``,
    and from format 4 ``spec_lists``)."""
    keys = raw.get("spec_keys", [])
    values = raw.get("spec_values", [])
    lists = raw.get("spec_lists", [])
    if not isinstance(keys, list) or not all(
        isinstance(ks, list) and all(isinstance(k, str) for k in ks) for ks in keys
    ):
        raise FleetError(f"{source}: $.spec_keys: expected an array of arrays of strings")
    if not isinstance(values, list):
        raise FleetError(f"{source}: $.spec_values: expected an array")
    if not isinstance(lists, list) or not all(isinstance(x, str) for x in lists):
        raise FleetError(f"{source}: $.spec_lists: expected an array of strings")
    return SpecPool.of(source, tuple(tuple(ks) for ks in keys), values, lists)


# A list value of at least this many objects has its items pooled (``items``): a
# host's WireGuard peers are every other host, so 1,000 hosts hold 1,000 lists of
# 999 peers, nearly all shared.
ITEMS_FROM = 4


class Writer:
    """Builds a pool while a snapshot is written: ``ref(spec)`` for each resource.

    ``items`` (format 4): a list of objects is stored as ``*N``, ``spec_lists[N]``
    holding its items' indexes in ``spec_values``; equal lists share one entry.
    """

    def __init__(self, canonical: Callable[[Json], str], *, items: bool = False) -> None:
        self.canonical = canonical  # equal values are those with equal canonical JSON
        self.items = items
        self.values: list[Json] = []
        self.lists: list[str] = []
        self._keys: dict[tuple[str, ...], int] = {}
        self._index: dict[str, int] = {}
        self._list_index: dict[str, int] = {}

    def ref(self, spec: Mapping[str, Json]) -> str:
        keys = tuple(spec)
        refs = [str(self._keys.setdefault(keys, len(self._keys)))]
        for key in keys:
            value = spec[key]
            if (
                self.items
                and type(value) is list
                and len(value) >= ITEMS_FROM
                and all(type(v) is dict for v in value)
            ):
                items = " ".join(self._value(v) for v in value)
                at = self._list_index.get(items)
                if at is None:
                    at = self._list_index[items] = len(self.lists)
                    self.lists.append(items)
                refs.append(f"*{at}")
            else:
                refs.append(self._value(value))
        return " ".join(refs)

    def _value(self, value: Json) -> str:
        text = self.canonical(value)
        at = self._index.get(text)
        if at is None:
            at = self._index[text] = len(self.values)
            self.values.append(value)
        return str(at)

    def key_lists(self) -> list[list[str]]:
        return [list(k) for k in self._keys]
