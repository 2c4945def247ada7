"""Golden tests: each broken fleet under tests/fleet/broken/ gives exactly the expected errors.

Each case directory holds ``CASE`` (what it is about), ``fleet/`` (the files)
and ``expected.txt`` (stderr of ``reconcile validate --fleet fleet``, run from
the case directory). Set ``UPDATE_GOLDEN=1`` to rewrite the expectations, then
review the diff.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from reconciler import cli

CASES = Path(__file__).parent / "broken"


def run_validate(case: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(case)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["validate", "--fleet", "fleet"])
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir()), ids=str)
def test_broken_fleet(case: str) -> None:
    directory = CASES / case
    code, out, err = run_validate(directory)
    expected_file = directory / "expected.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(err)
    assert code == 1, out
    assert out == ""
    assert "Traceback" not in err
    assert err == expected_file.read_text()
    # Every line but the count names a file and a line.
    for line in err.splitlines()[:-1]:
        file, line_no, col, _ = line.split(":", 3)
        assert (directory / file).exists(), line
        assert int(line_no) >= 1 and int(col) >= 1, line


def test_there_are_enough_cases() -> None:
    assert len(list(CASES.iterdir())) >= 20
