"""Golden plan cases: each tests/plans/<case>/ holds a fleet, an observed snapshot and the
expected plan (text and JSON) or the expected error. One parametrized test runs them all.

``UPDATE_GOLDEN=1 pytest tests/plans`` rewrites the expected files; review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fleet import load as fleet_load
from fleet.errors import FleetError
from reconciler.core import plan as P
from reconciler.core import planfile, planner, render, snapfile

HERE = Path(__file__).resolve().parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "case.json").exists())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def run_case(case: Path, snapshot: str | None = None) -> tuple[str, str, str]:
    """(text, json, error) for one case; exactly one of text/json and error is empty.

    ``snapshot``: the observed snapshot's text, instead of the case's observed.json.
    """
    meta = json.loads((case / "case.json").read_text())
    try:
        fleet = fleet_load.load_dir(case / "fleet")
        text = (case / "observed.json").read_text() if snapshot is None else snapshot
        snap = snapfile.loads(text, "observed.json", lazy=True)  # as `reconcile plan` reads it
        opts = meta.get("options", {})
        options = P.Options(
            targets=tuple(opts.get("targets", ())),
            excludes=tuple(opts.get("excludes", ())),
            allow_mass_destroy=opts.get("allow_mass_destroy", False),
            allow_anycast_withdraw=opts.get("allow_anycast_withdraw", False),
        )
        plan = planner.make(fleet, snap, origin=P.FleetRef("0" * 40, False), options=options)
    except FleetError as exc:
        lines = [line.replace(str(case) + "/", "") for line in exc.lines()]
        return "", "", "\n".join(lines) + "\n"
    # The plan must survive its own JSON round trip unchanged (apply reads it back).
    text = planfile.dumps(plan)
    assert planfile.dumps(planfile.loads(text)[0]) == text
    return render.text(plan, meta.get("verbose", 0)), text, ""


def test_enough_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", CASES)
def test_plan_case(name: str) -> None:
    case = HERE / name
    text, js, error = run_case(case)
    expected = {"expected.txt": text, "expected.json": js, "expected_error.txt": error}
    if UPDATE:
        for fname, content in expected.items():
            path = case / fname
            if content:
                path.write_text(content)
            elif path.exists():
                path.unlink()
        return
    for fname, content in expected.items():
        path = case / fname
        if content:
            assert path.exists(), f"{name}: {fname} missing (got output; run with UPDATE_GOLDEN=1)"
            assert content == path.read_text(), f"{name}: {fname} differs"
        else:
            assert not path.exists(), f"{name}: expected {fname} but got none"


@pytest.mark.parametrize("name", CASES)
def test_plan_case_from_a_saved_snapshot(name: str) -> None:
    """The case's snapshot (inline specs, format 1) saved as `observe --save` writes it
    (format 4: pooled specs, each host's resources in a lazily read body, laid out to be
    read by position; and the previous formats 2 and 3) plans exactly the same."""
    case = HERE / name
    old = (case / "observed.json").read_text()
    assert json.loads(old)["format_version"] == 1
    try:
        snap = snapfile.loads(old, "observed.json")
    except FleetError:
        pytest.skip("the case's snapshot itself is the error under test")
    for version in (2, 3, 4):
        saved = snapfile.dumps(snap, version)
        assert json.loads(saved)["format_version"] == version
        assert run_case(case, saved) == run_case(case)
    # the same format-4 document laid out otherwise is read as plain JSON, to the same plan
    assert run_case(case, json.dumps(json.loads(saved), indent=1)) == run_case(case)
