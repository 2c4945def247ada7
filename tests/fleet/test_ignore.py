"""`.fleetignore` follows gitignore's rules."""

from __future__ import annotations

import pytest

from fleet import ignore

RULES = ignore.parse(
    """
# comment
drafts/
*.tmpl.yaml
/top.yaml
!keep.tmpl.yaml
docs/**/ref.yaml
a?c.yaml
[xy]z.yaml
"""
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("drafts/app.yaml", True),
        ("apps/drafts/app.yaml", True),
        ("drafts.yaml", False),
        ("apps/web.tmpl.yaml", True),
        ("apps/keep.tmpl.yaml", False),
        ("top.yaml", True),
        ("apps/top.yaml", False),
        ("docs/ref.yaml", True),
        ("docs/a/b/ref.yaml", True),
        ("abc.yaml", True),
        ("abbc.yaml", False),
        ("yz.yaml", True),
        ("zz.yaml", False),
        ("apps/web.yaml", False),
    ],
)
def test_matching(path: str, expected: bool) -> None:
    assert ignore.ignored(RULES, path) is expected


def test_file_in_ignored_directory_cannot_be_reincluded() -> None:
    rules = ignore.parse("build/\n!build/app.yaml\n")
    assert ignore.ignored(rules, "build/app.yaml")
