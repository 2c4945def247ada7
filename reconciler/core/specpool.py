"""The spec pool of a saved snapshot (``format_version`` 2): each spec value once, specs by index.

Pure. A fleet's machines of one app share every spec field but their slot,
region and address, so a saved snapshot stores each distinct top-level spec
value once (``spec_values``), each spec's key list once (``spec_keys``), and
each resource's spec as a ``spec_ref`` string: the index of its key list, then
one value index per key. :class:`PooledSpec` is such a spec, decoded on first
use: a no-op plan compares etags and reads only the ``app`` and ``slot`` of
each machine. :mod:`reconciler.core.observed` reads and writes the file.
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
    positions: tuple[Mapping[str, int], ...]  # per key list: key -> its place in a spec_ref
    # spec_ref -> its one PooledSpec: resources with equal specs (an app's announcement
    # on every edge host, a region's route on each of its edges) share one, decoded once
    specs: dict[str, PooledSpec]

    @staticmethod
    def of(source: str, keys: tuple[tuple[str, ...], ...], values: list[Json]) -> SpecPool:
        at = tuple({k: i for i, k in enumerate(ks, start=1)} for ks in keys)
        return SpecPool(source, keys, values, at, {})


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
        values = self._pool.values
        try:
            i = int(ref)
        except ValueError:
            raise self._bad() from None
        if not 0 <= i < len(values):
            raise self._bad()
        return values[i]

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
    """The pool of a saved snapshot's top level (``spec_keys``, ``spec_values``)."""
    keys = raw.get("spec_keys", [])
    values = raw.get("spec_values", [])
    if not isinstance(keys, list) or not all(
        isinstance(ks, list) and all(isinstance(k, str) for k in ks) for ks in keys
    ):
        raise FleetError(f"{source}: $.spec_keys: expected an array of arrays of strings")
    if not isinstance(values, list):
        raise FleetError(f"{source}: $.spec_values: expected an array")
    return SpecPool.of(source, tuple(tuple(ks) for ks in keys), values)


class Writer:
    """Builds a pool while a snapshot is written: ``ref(spec)`` for each resource."""

    def __init__(self, canonical: Callable[[Json], str]) -> None:
        self.canonical = canonical  # equal values are those with equal canonical JSON
        self.values: list[Json] = []
        self._keys: dict[tuple[str, ...], int] = {}
        self._index: dict[str, int] = {}

    def ref(self, spec: Mapping[str, Json]) -> str:
        keys = tuple(spec)
        refs = [str(self._keys.setdefault(keys, len(self._keys)))]
        for key in keys:
            value = spec[key]
            text = self.canonical(value)
            at = self._index.get(text)
            if at is None:
                at = self._index[text] = len(self.values)
                self.values.append(value)
            refs.append(str(at))
        return " ".join(refs)

    def key_lists(self) -> list[list[str]]:
        return [list(k) for k in self._keys]
