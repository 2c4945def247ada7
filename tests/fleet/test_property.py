"""Property-based: whatever bytes or documents arrive, only our model error escapes.

Also checks that the compiled fast schema check and jsonschema agree on every
document, since the loader trusts the fast check for valid documents.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import load, schema
from fleet.errors import ModelError, ModelErrors
from fleet.model import Kind
from fleet.yamlsrc import Document

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = {
    p.relative_to(EXAMPLES).as_posix(): p.read_bytes() for p in sorted(EXAMPLES.rglob("*.yaml"))
}
DOCS = [d for data in FILES.values() for d in yaml.safe_load_all(data)]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["auto", "none", "198.51.100.7", "fd00::/48", "15s", "2gb", "http", "ams"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def load_bytes(files: dict[str, bytes]) -> None:
    with contextlib.suppress(ModelErrors, ModelError):
        load.parse_files(iter(sorted(files.items())), "fleet")


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    load_bytes({**FILES, "apps/random.yaml": data})


yaml_alphabet = st.sampled_from([*list(":-[]{}&*!|>'\"#%@`,? \n\tabc01\\"), "<<", "---", "..."])


@SETTINGS
@given(st.lists(yaml_alphabet, max_size=80))
def test_random_yaml_like_text(tokens: list[str]) -> None:
    load_bytes({**FILES, "apps/random.yaml": "".join(tokens).encode()})


@SETTINGS
@given(
    st.sampled_from(sorted(FILES)),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(list(":-[] \n{}&*x1'"))), max_size=6
    ),
)
def test_mutated_example_bytes(name: str, edits: list[tuple[int, str]]) -> None:
    data = bytearray(FILES[name])
    for pos, char in edits:
        pos %= len(data) + 1
        if char == "x" and pos < len(data):
            del data[pos]
        else:
            data[pos:pos] = char.encode()
    load_bytes({**FILES, name: bytes(data)})


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], action: str, new: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return new
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = new
    elif isinstance(parent, dict):
        parent[f"extra{len(parent)}"] = new
    return doc


@SETTINGS
@given(st.data(), st.sampled_from(["delete", "replace", "add"]), json_value)
def test_mutated_documents_fast_check_agrees_with_jsonschema(
    data: st.DataObject, action: str, new: Any
) -> None:
    original = data.draw(st.sampled_from(DOCS))
    path = data.draw(st.sampled_from(_paths(original)))
    doc = _mutate(original, path, action, new)
    kind = Kind(original["kind"])
    fast = schema._fast()[kind]
    assert fast is not None
    validator = schema._validators()[kind]
    assert fast(doc) == validator.is_valid(doc), (path, action, new)
    # And the loader turns it into errors or a fleet, never anything else.
    text = yaml.safe_dump(doc).encode()
    load_bytes({**FILES, "apps/mutated.yaml": text})


def test_fast_check_accepts_every_example_document() -> None:
    for raw in DOCS:
        kind = Kind(raw["kind"])
        fast = schema._fast()[kind]
        assert fast is not None and fast(raw)
        jsonschema_errors = schema.validate(Document("x", 0, raw, (1, 1), {}), kind)
        assert jsonschema_errors == []
