"""Safe, bounded YAML parsing that remembers where every value came from.

Why not ``yaml.safe_load``: it silently keeps the last of duplicate keys, forgets
line numbers, expands alias bombs without limit, and its C composer recurses
(a deeply nested document crashes the interpreter). Here the C parser
(libyaml, when available) produces events and one iterative loop builds the
values, which also turns out faster than ``yaml.load`` with ``CSafeLoader``.

Scalars follow the YAML 1.2 core schema, which is what operators expect:
``true``/``false``, ``null``/``~``, integers and floats; ``yes``, ``no``, ``on``,
``off`` and dates stay strings. Mapping keys are always strings (their text).
Merge keys (``<<: *base``) are supported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml import events as ev

from fleet.errors import Location, ModelError

try:
    _Loader: type[Any] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pure Python fallback
    _Loader = yaml.SafeLoader

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 1_000_000  # values per file, counting alias expansions

_INT = re.compile(r"[-+]?[0-9][0-9_]*$")
_INT_OTHER = re.compile(r"0o[0-7]+$|0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL: dict[str, Any] = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
    "null": None,
    "Null": None,
    "NULL": None,
    "~": None,
    "": None,
    ".inf": float("inf"),
    "+.inf": float("inf"),
    "-.inf": float("-inf"),
    ".nan": float("nan"),
}
_NUMERIC_START = frozenset("0123456789+-.")

Mark = tuple[int, int]  # 1-based line, 1-based column


@dataclass(slots=True)
class Document:
    """One parsed YAML document: its value, and the marks of every value in it.

    ``marks[id(container)]`` maps a key (or index) to ``(key_mark, value_mark)``.
    """

    file: str
    index: int
    value: Any
    start: Mark
    marks: dict[int, dict[Any, tuple[Mark, Mark]]]

    def locate(self, path: Sequence[str | int], *, at_key: bool = False) -> Mark:
        """The mark of the value at ``path`` (or of its key), else of its nearest parent."""
        best = self.start
        node = self.value
        for i, part in enumerate(path):
            table = self.marks.get(id(node))
            if table is None or part not in table:
                return best
            key_mark, value_mark = table[part]
            last = i == len(path) - 1
            best = key_mark if (last and at_key) else value_mark
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return best
        return best


class _Builder:
    """Turns one document's events into values; not reusable across documents."""

    __slots__ = ("anchors", "budget", "file", "marks", "sizes")

    def __init__(self, file: str, budget: list[int]) -> None:
        self.file = file
        self.anchors: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}
        self.marks: dict[int, dict[Any, tuple[Mark, Mark]]] = {}
        self.budget = budget

    def fail(self, mark: Mark, message: str) -> ModelError:
        return ModelError(Location(self.file, mark[0], mark[1]), message)


def _mark(event: Any) -> Mark:
    m = event.start_mark
    return (m.line + 1, m.column + 1)


def _scalar(event: Any, builder: _Builder) -> Any:
    value: str = event.value
    tag = event.tag
    if tag is not None and tag != "!":
        return _tagged(tag, value, event, builder)
    if event.style or not event.implicit[0]:
        return value
    if value in _SPECIAL:
        return _SPECIAL[value]
    if value[0] in _NUMERIC_START:
        if _INT.match(value):
            return int(value.replace("_", ""))
        if _INT_OTHER.match(value):
            return int(value, 0)
        if _FLOAT.match(value) and value not in {".", "+", "-"}:
            return float(value.replace("_", ""))
    return value


def _tagged(tag: str, value: str, event: Any, builder: _Builder) -> Any:
    try:
        if tag == "tag:yaml.org,2002:str":
            return value
        if tag == "tag:yaml.org,2002:int":
            return int(value.replace("_", ""), 0)
        if tag == "tag:yaml.org,2002:float":
            return float(value.replace("_", ""))
        if tag == "tag:yaml.org,2002:bool":
            return {"true": True, "false": False}[value.lower()]
        if tag == "tag:yaml.org,2002:null":
            return None
    except (ValueError, KeyError):
        raise builder.fail(_mark(event), f"{value!r} is not a valid {tag}") from None
    raise builder.fail(_mark(event), f"unsupported YAML tag {tag}")


class _Frame:
    """An open mapping or sequence while its events stream in."""

    __slots__ = ("anchor", "count", "key", "key_mark", "mark", "merges", "table", "value")

    def __init__(self, value: Any, mark: Mark, anchor: str | None) -> None:
        self.value = value
        self.mark = mark
        self.anchor = anchor
        self.key: Any = _NO_KEY
        self.key_mark: Mark = mark
        self.table: dict[Any, tuple[Mark, Mark]] = {}
        self.merges: list[tuple[Any, Mark]] = []
        self.count = 1


_NO_KEY = object()
_MERGE = object()


def parse(data: bytes, file: str) -> list[Document]:
    """Parse every document of one file. Raises :class:`ModelError` on the first problem."""
    if len(data) > MAX_FILE_BYTES:
        raise ModelError(
            Location(file), f"file is {len(data)} bytes; the limit is {MAX_FILE_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ModelError(
            Location(file, line, col), f"not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    loader = _Loader(text)
    try:
        return _documents(loader, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        raise ModelError(Location(file, line, col), f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ModelError(Location(file), f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _documents(loader: Any, file: str) -> list[Document]:
    get = loader.get_event
    docs: list[Document] = []
    budget = [MAX_NODES]
    get()  # StreamStart
    while True:
        event = get()
        cls = event.__class__
        if cls is ev.StreamEndEvent:
            return docs
        start = _mark(event)  # DocumentStart
        builder = _Builder(file, budget)
        value = _one_document(get, builder)
        get()  # DocumentEnd
        docs.append(Document(file, len(docs), value, start, builder.marks))


def _one_document(get: Any, b: _Builder) -> Any:
    stack: list[_Frame] = []
    budget = b.budget
    while True:
        event = get()
        cls = event.__class__
        size = 1
        if cls is ev.ScalarEvent:
            value = _scalar(event, b)
            mark = _mark(event)
            anchor = event.anchor
        elif cls is ev.MappingStartEvent or cls is ev.SequenceStartEvent:
            if len(stack) >= MAX_DEPTH:
                raise b.fail(_mark(event), f"nested deeper than {MAX_DEPTH} levels")
            _check_tag(event, b)
            container: Any = {} if cls is ev.MappingStartEvent else []
            stack.append(_Frame(container, _mark(event), event.anchor))
            if event.anchor is not None:
                b.anchors[event.anchor] = _OPEN
            continue
        elif cls is ev.MappingEndEvent or cls is ev.SequenceEndEvent:
            frame = stack.pop()
            if frame.merges:
                _merge(frame, b)
            value = frame.value
            mark = frame.mark
            anchor = frame.anchor
            size = frame.count
            if frame.table:
                b.marks[id(value)] = frame.table
        elif cls is ev.AliasEvent:
            mark = _mark(event)
            if event.anchor not in b.anchors:
                raise b.fail(mark, f"unknown alias *{event.anchor}")
            value = b.anchors[event.anchor]
            if value is _OPEN:
                raise b.fail(mark, f"recursive alias *{event.anchor}")
            anchor = None
            size = b.sizes[event.anchor]
        else:  # pragma: no cover - libyaml emits nothing else inside a document
            raise b.fail(_mark(event), f"unexpected YAML event {cls.__name__}")

        budget[0] -= size
        if budget[0] < 0:
            raise b.fail(
                mark, f"expands to more than {MAX_NODES} values (an alias bomb?); refusing"
            )
        if anchor is not None:
            b.anchors[anchor] = value
            b.sizes[anchor] = size
        if not stack:
            return value
        stack[-1].count += size
        _attach(stack[-1], value, mark, event, b)


_OPEN = object()


def _check_tag(event: Any, b: _Builder) -> None:
    tag = event.tag
    if tag is None or tag == "!" or tag in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
        return
    raise b.fail(_mark(event), f"unsupported YAML tag {tag}")


def _attach(top: _Frame, value: Any, mark: Mark, event: Any, b: _Builder) -> None:
    container = top.value
    if type(container) is list:
        top.table[len(container)] = (mark, mark)
        container.append(value)
        return
    if top.key is _NO_KEY:
        if event.__class__ is not ev.ScalarEvent:
            raise b.fail(mark, "mapping keys must be plain strings, not collections")
        if event.value == "<<" and not event.style:
            top.key = _MERGE
        else:
            top.key = event.value
        top.key_mark = mark
        return
    key = top.key
    top.key = _NO_KEY
    if key is _MERGE:
        top.merges.append((value, mark))
        return
    if key in container:
        first = top.table[key][0]
        raise b.fail(top.key_mark, f"duplicate key {key!r} (first defined at line {first[0]})")
    container[key] = value
    top.table[key] = (top.key_mark, mark)


def _merge(frame: _Frame, b: _Builder) -> None:
    container = frame.value
    for value, mark in frame.merges:
        sources = value if isinstance(value, list) else [value]
        for source in sources:
            if not isinstance(source, dict):
                raise b.fail(mark, "a merge key (<<) takes a mapping or a list of mappings")
            source_marks = b.marks.get(id(source), {})
            for key, item in source.items():
                if key not in container:
                    container[key] = item
                    frame.table[key] = source_marks.get(key, (mark, mark))
