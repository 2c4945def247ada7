"""`.fleetignore`: which YAML files under the fleet directory are not fleet documents.

Gitignore syntax, because operators already know it: ``#`` comments, ``!``
negation, a trailing ``/`` for directories only, a ``/`` inside the pattern to
anchor it at the fleet root, ``*``, ``?``, ``[...]`` and ``**``. As in Git, a
file inside an ignored directory cannot be re-included. Pure: patterns in,
decisions out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IGNORE_FILE = ".fleetignore"


@dataclass(frozen=True, slots=True)
class Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _translate(pattern: str) -> str:
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse(text: str) -> tuple[Rule, ...]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if raw.endswith("\\ "):
            line = raw[:-2] + " "
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate or line.startswith(("\\!", "\\#")):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        body = _translate(line.lstrip("/"))
        prefix = "" if anchored else "(?:.*/)?"
        rules.append(Rule(re.compile(f"^{prefix}{body}$"), negate, dir_only))
    return tuple(rules)


def _decide(rules: tuple[Rule, ...], path: str, is_dir: bool) -> bool:
    ignored = False
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if rule.regex.match(path):
            ignored = not rule.negate
    return ignored


def ignored(rules: tuple[Rule, ...], path: str) -> bool:
    """Whether a file at ``path`` (relative, ``/``-separated) is ignored."""
    if not rules:
        return False
    parts = path.split("/")
    for depth in range(1, len(parts)):
        if _decide(rules, "/".join(parts[:depth]), True):
            return True
    return _decide(rules, path, False)
