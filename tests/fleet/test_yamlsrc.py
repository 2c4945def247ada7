"""The bounded YAML parser: values, positions, and everything it must refuse."""

from __future__ import annotations

import time

import pytest

from fleet import yamlsrc
from fleet.errors import ModelError


def parse(text: str | bytes) -> list[object]:
    data = text.encode() if isinstance(text, str) else text
    return [d.value for d in yamlsrc.parse(data, "f.yaml")]


def error(text: str | bytes) -> str:
    with pytest.raises(ModelError) as info:
        parse(text)
    return str(info.value)


def test_core_schema_scalars() -> None:
    (value,) = parse(
        "a: 1\nb: -2.5\nc: true\nd: no\ne: ~\nf: 0x1f\ng: '7'\nh: 1_000\ni: 2024-01-01\nj: on\n"
    )
    assert value == {
        "a": 1,
        "b": -2.5,
        "c": True,
        "d": "no",
        "e": None,
        "f": 31,
        "g": "7",
        "h": 1000,
        "i": "2024-01-01",
        "j": "on",
    }


def test_keys_are_their_text() -> None:
    (value,) = parse("1: a\ntrue: b\nnull: c\n")
    assert value == {"1": "a", "true": "b", "null": "c"}


def test_positions_point_at_values_and_keys() -> None:
    (doc,) = yamlsrc.parse(b"a:\n  b:\n    - x\n    - y: 1\n", "f.yaml")
    assert doc.locate(["a", "b", 1, "y"]) == (4, 10)
    assert doc.locate(["a", "b", 1, "y"], at_key=True) == (4, 7)
    assert doc.locate(["a", "missing"]) == (2, 3)


def test_multi_document_and_empty_documents() -> None:
    assert parse("---\na: 1\n---\n---\nb: 2\n") == [{"a": 1}, None, {"b": 2}]
    assert parse("") == []


def test_merge_keys() -> None:
    (value,) = parse("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n")
    assert value["d"] == {"x": 1, "y": 3}


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    assert error("a: 1\nb: 2\na: 3\n") == "f.yaml:3:1: duplicate key 'a' (first defined at line 1)"


def test_recursive_and_unknown_aliases() -> None:
    assert "recursive alias *a" in error("a: &a [1, *a]\n")
    assert "unknown alias *nope" in error("a: *nope\n")


def test_alias_bomb_is_refused_fast() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    start = time.monotonic()
    message = error("\n".join(lines) + "\n")
    assert "alias bomb" in message
    assert time.monotonic() - start < 1.0


def test_deep_nesting_is_refused_without_crashing() -> None:
    # A million brackets: the C composer would overflow the C stack here.
    # (libyaml itself may refuse first, scanning ahead; either way: a clear error.)
    assert "nest" in error("[" * 1_000_000 + "]" * 1_000_000)
    block = "".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "v\n"
    assert "nested deeper" in error(block)


def test_huge_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsrc, "MAX_FILE_BYTES", 100)
    assert "limit is 100 bytes" in error("a: " + "x" * 200)


def test_non_utf8_points_at_the_byte() -> None:
    assert error(b"a: 1\nb: caf\xe9\n") == "f.yaml:2:7: not valid UTF-8 (byte 0xe9)"


def test_bom_is_accepted() -> None:
    assert parse("\ufeffa: 1\n".encode()) == [{"a": 1}]


def test_tags() -> None:
    (value,) = parse("a: !!str 1\nb: !!int '7'\nc: !!float '1.5'\n")
    assert value == {"a": "1", "b": 7, "c": 1.5}
    assert "unsupported YAML tag" in error("a: !!python/object:os.system x\n")
    assert "unsupported YAML tag" in error("a: !custom {x: 1}\n")


def test_complex_keys_are_refused() -> None:
    assert "mapping keys must be plain strings" in error("? [a, b]\n: c\n")


def test_syntax_errors_carry_a_position() -> None:
    assert error("a: [1, 2\n").startswith("f.yaml:2:1: invalid YAML")
