"""JSON Schema validation of fleet documents, with errors an operator can act on.

The schemas live as files in ``fleet/schemas/`` (one per kind, plus shared
definitions); this module compiles them once and turns jsonschema's errors
into :class:`~fleet.errors.ModelError` with file, line, column, document and a
JSON path such as ``spec.services[0].internal_port``. A subschema may carry an
``x-message`` that replaces jsonschema's wording for patterns and unions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet import fastschema
from fleet.errors import Location, ModelError
from fleet.model import API_VERSION, Kind
from fleet.yamlsrc import Document

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError

# jsonschema (and referencing) are imported only when a document fails the
# compiled check: valid fleets, the common case, never pay for loading them.

_FILES = {Kind.NETWORK: "network.json", Kind.REGION: "region.json", Kind.HOST: "host.json"}
_FILES[Kind.APP] = "app.json"
_BASE = "https://fleet-reconciler.invalid/schemas/"
_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "dict": "mapping",
    "list": "list",
    "NoneType": "null",
}


# Next to this module (package data): importlib.resources would import zipfile,
# tempfile and random (~30 ms) into every command that loads a fleet.
_SCHEMAS = Path(__file__).resolve().with_name("schemas")


def schema_text(name: str) -> str:
    return (_SCHEMAS / name).read_text(encoding="utf-8")


@functools.cache
def _schemas() -> dict[str, Any]:
    return {name: json.loads(schema_text(name)) for name in ["common.json", *_FILES.values()]}


def _absolute_refs(node: Any, file: str) -> Any:
    """A copy of a schema whose local ``#/...`` references name their file."""
    if isinstance(node, dict):
        out = {k: _absolute_refs(v, file) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = file + ref
        return out
    if isinstance(node, list):
        return [_absolute_refs(v, file) for v in node]
    return node


@functools.cache
def _fast() -> dict[Kind, fastschema.Check | None]:
    schemas = {name: _absolute_refs(s, name) for name, s in _schemas().items()}

    def resolve(ref: str) -> Any:
        file, _, pointer = ref.partition("#")
        node = schemas[file]
        for part in pointer.strip("/").split("/") if pointer else []:
            node = node[part]
        return node

    return {kind: fastschema.compile_schema(schemas[f], resolve) for kind, f in _FILES.items()}


@functools.cache
def _validators() -> dict[Kind, jsonschema.protocols.Validator]:
    import jsonschema  # noqa: PLC0415 - only for documents that fail the fast check
    import referencing  # noqa: PLC0415

    schemas = _schemas()
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(
        (_BASE + name, referencing.Resource.from_contents(schema))
        for name, schema in schemas.items()
    )
    checker = jsonschema.FormatChecker(["ipv4", "ipv6"])
    for name, check in fastschema.PREFIX_FORMATS.items():
        checker.checks(name)(check)
    cls = jsonschema.Draft202012Validator
    return {
        kind: cls(schemas[file], registry=registry, format_checker=checker)
        for kind, file in _FILES.items()
    }


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def describe(doc: Document) -> str:
    """``App/web`` for a document, or what we can tell of it."""
    value = doc.value
    if isinstance(value, dict):
        kind = value.get("kind")
        meta = value.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(kind, str) and isinstance(name, str):
            return f"{kind}/{name}"
        if isinstance(kind, str):
            return kind
    return f"document {doc.index + 1}"


def error_at(
    doc: Document, path: Sequence[str | int], message: str, *, at_key: bool = False
) -> ModelError:
    line, col = doc.locate(path, at_key=at_key)
    where = Location(doc.file, line, col, describe(doc), format_path(path))
    return ModelError(where, message)


def envelope(doc: Document) -> tuple[Kind | None, list[ModelError]]:
    """Check that a document is a fleet document at all, and say which kind."""
    value = doc.value
    if not isinstance(value, dict):
        got = _TYPE_NAMES.get(type(value).__name__, type(value).__name__)
        return None, [error_at(doc, [], f"not a fleet document: expected a mapping, got {got}")]
    api = value.get("apiVersion")
    if api != API_VERSION:
        if api is None:
            message = f"not a fleet document: apiVersion is missing (want {API_VERSION})"
        else:
            message = f"not a fleet document: apiVersion is {api!r}, want {API_VERSION!r}"
        return None, [error_at(doc, ["apiVersion"], message)]
    kind = value.get("kind")
    try:
        return Kind(str(kind)), []
    except ValueError:
        kinds = ", ".join(k.value for k in Kind)
        return None, [error_at(doc, ["kind"], f"unknown kind {kind!r}; want one of {kinds}")]


def validate(doc: Document, kind: Kind) -> list[ModelError]:
    """All schema errors of one document."""
    fast = _fast()[kind]
    if fast is not None and fast(doc.value):
        return []
    validator = _validators()[kind]
    errors: list[ModelError] = []
    for error in validator.iter_errors(doc.value):
        errors.extend(_convert(doc, error))
    return errors


def _convert(doc: Document, error: ValidationError) -> Iterator[ModelError]:
    path: list[str | int] = list(error.absolute_path)
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance: Any = error.instance
    custom = schema.get("x-message")
    if keyword == "required":
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        missing = [p for p in required if p not in instance]
        for name in missing:
            yield error_at(doc, path, f"missing required field {name!r}")
        return
    if keyword == "additionalProperties":
        allowed = schema.get("properties", {})
        for key in instance:
            if key not in allowed:
                hint = _suggest(key, allowed)
                yield error_at(doc, [*path, key], f"unknown field{hint}", at_key=True)
        return
    if keyword == "propertyNames":
        key = str(error.instance)
        inner = error.context[0] if error.context else None
        detail = _message(inner) if inner is not None else "is not allowed"
        yield error_at(doc, [*path, key], f"invalid key {key!r}: {detail}", at_key=True)
        return
    if custom:
        yield error_at(doc, path, f"{custom}; got {_show(instance)}")
        return
    yield error_at(doc, path, _message(error))


def _message(error: ValidationError) -> str:
    keyword = error.validator
    value: Any = error.validator_value
    instance: Any = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    custom = schema.get("x-message")
    if custom:
        return f"{custom}; got {_show(instance)}"
    if keyword == "type":
        want = value if isinstance(value, str) else " or ".join(value)
        return f"must be {want}, got {_show(instance)}"
    if keyword == "enum":
        options = ", ".join(repr(v) for v in value)
        return f"must be one of {options}; got {_show(instance)}"
    if keyword == "const":
        return f"must be {value!r}; got {_show(instance)}"
    if keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return f"must be {op[keyword]} {value}; got {_show(instance)}"
    if keyword == "minProperties":
        return "must not be empty"
    if keyword == "minLength":
        return "must not be empty"
    if keyword == "uniqueItems":
        return "must not repeat items"
    if keyword == "pattern":
        return f"must match {value!r}; got {_show(instance)}"
    if keyword in ("oneOf", "anyOf") and error.context:
        from jsonschema.exceptions import best_match  # noqa: PLC0415 - see _validators

        best = best_match(error.context)
        if best is not None:
            return _message(best)
    return error.message


def _show(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value).__name__, type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _suggest(key: str, allowed: dict[str, Any]) -> str:
    import difflib  # noqa: PLC0415  # only for a document that fails: a suggestion

    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
