"""A compiled yes/no check for our JSON Schemas, so valid fleets validate fast.

jsonschema stays the authority: it produces every error message. But walking
a schema through jsonschema's generic machinery costs about a millisecond per
document, which dominates loading a fleet of a thousand hosts. This module
compiles a schema once into nested Python closures that answer only "valid or
not". The loader asks it first and calls jsonschema only for documents it
rejects, so both must agree; a property-based test checks that they do.

Only the keywords our schemas use are compiled; a schema with any other
keyword compiles to ``None`` and the caller falls back to jsonschema.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "title", "description", "default", "x-message", "$comment", "examples"}
)


class Unsupported(Exception):
    """The schema uses a keyword this compiler does not know."""


def _is_type(name: str) -> Check:
    if name == "integer":
        return lambda v: type(v) is int or (type(v) is float and v.is_integer())
    if name == "number":
        return lambda v: type(v) in (int, float)
    if name == "string":
        return lambda v: type(v) is str
    if name == "boolean":
        return lambda v: type(v) is bool
    if name == "object":
        return lambda v: type(v) is dict
    if name == "array":
        return lambda v: type(v) is list
    if name == "null":
        return lambda v: v is None
    raise Unsupported(f"type {name}")


def _ipv4(v: Any) -> bool:
    if type(v) is not str:
        return True
    try:
        ipaddress.IPv4Address(v)
    except ValueError:
        return False
    return True


def _ipv6(v: Any) -> bool:
    if type(v) is not str:
        return True
    try:
        address = ipaddress.IPv6Address(v)
    except ValueError:
        return False
    return not address.scope_id


def prefix_checker(version: int) -> Check:
    """A prefix (``ADDRESS/LEN``, host bits allowed) of one IP version; non-strings pass."""

    def check(v: Any) -> bool:
        if type(v) is not str:
            return True
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            return False
        return net.version == version

    return check


PREFIX_FORMATS = {"ipv4-prefix": prefix_checker(4), "ipv6-prefix": prefix_checker(6)}


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    return bool(a == b)


def compile_schema(schema: Mapping[str, Any], resolve: Callable[[str], Any]) -> Check | None:
    """A yes/no validator for ``schema``, or None if it uses unsupported keywords."""
    try:
        return _compile(schema, resolve)
    except Unsupported:
        return None


def _compile(schema: Any, resolve: Callable[[str], Any]) -> Check:
    if schema is True:
        return lambda v: True
    if schema is False:
        return lambda v: False
    checks: list[Check] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS or key == "$defs":
            continue
        checks.append(_keyword(key, value, schema, resolve))
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)
    return lambda v: all(c(v) for c in frozen)


def _keyword(key: str, value: Any, schema: Any, resolve: Callable[[str], Any]) -> Check:
    if key == "$ref":
        return _compile(resolve(value), resolve)
    if key == "type":
        names = [value] if isinstance(value, str) else list(value)
        tests = tuple(_is_type(n) for n in names)
        return lambda v: any(t(v) for t in tests)
    if key == "properties":
        props = tuple((k, _compile(s, resolve)) for k, s in value.items())
        return lambda v: type(v) is not dict or all(c(v[k]) for k, c in props if k in v)
    if key == "required":
        required = tuple(value)
        return lambda v: type(v) is not dict or all(k in v for k in required)
    if key == "additionalProperties":
        known = frozenset(schema.get("properties", {}))
        if "patternProperties" in schema:
            raise Unsupported("patternProperties")
        extra = _compile(value, resolve)
        return lambda v: (
            type(v) is not dict or all(extra(item) for k, item in v.items() if k not in known)
        )
    if key == "propertyNames":
        names_check = _compile(value, resolve)
        return lambda v: type(v) is not dict or all(names_check(k) for k in v)
    if key == "items":
        item = _compile(value, resolve)
        return lambda v: type(v) is not list or all(item(x) for x in v)
    if key == "enum":
        options = tuple(value)
        return lambda v: any(_equal(v, o) for o in options)
    if key == "const":
        return lambda v: _equal(v, value)
    if key == "pattern":
        rx = re.compile(value)
        return lambda v: type(v) is not str or rx.search(v) is not None
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return _bound(key, value)
    if key == "minProperties":
        return lambda v: type(v) is not dict or len(v) >= value
    if key == "minLength":
        return lambda v: type(v) is not str or len(v) >= value
    if key == "uniqueItems":
        if not value:
            return lambda v: True
        return lambda v: type(v) is not list or _unique(v)
    if key in ("anyOf", "oneOf"):
        subs = tuple(_compile(s, resolve) for s in value)
        if key == "anyOf":
            return lambda v: any(s(v) for s in subs)
        return lambda v: sum(1 for s in subs if s(v)) == 1
    if key == "format":
        if value == "ipv4":
            return _ipv4
        if value == "ipv6":
            return _ipv6
        if value in PREFIX_FORMATS:
            return PREFIX_FORMATS[value]
        raise Unsupported(f"format {value}")
    raise Unsupported(key)


def _bound(key: str, limit: float) -> Check:
    def numeric(v: Any) -> bool:
        return type(v) in (int, float)

    if key == "minimum":
        return lambda v: not numeric(v) or v >= limit
    if key == "maximum":
        return lambda v: not numeric(v) or v <= limit
    if key == "exclusiveMinimum":
        return lambda v: not numeric(v) or v > limit
    return lambda v: not numeric(v) or v < limit


def _unique(items: list[Any]) -> bool:
    seen: list[Any] = []
    for item in items:
        if any(_equal(item, s) for s in seen):
            return False
        seen.append(item)
    return True
