"""`reconcile` imports only the module of the command it runs; the table stays true."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from reconciler import cli


def _registered() -> dict[str, tuple[str, str]]:
    """Command -> (module, help) as the command modules themselves register them."""
    found: dict[str, tuple[str, str]] = {}
    for module in dict.fromkeys(c.module for c in cli.COMMANDS):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        for action in sub._choices_actions:
            found[action.dest] = (module, str(action.help))
    return found


def test_the_table_matches_what_the_modules_register() -> None:
    table = {c.name: (c.module, c.help) for c in cli.COMMANDS}
    assert table == _registered()


def test_a_modules_commands_are_together_in_the_table() -> None:
    modules = [c.module for c in cli.COMMANDS]
    runs = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
    assert len(runs) == len(set(runs))


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["observe", "--fleet", "x"], "observe"),
        (["-v", "plan"], "plan"),
        (["-h"], None),
        ([], None),
    ],
)
def test_chosen(argv: list[str], command: str | None) -> None:
    assert cli.chosen(argv) == command


def python(code: str) -> str:
    """What a fresh interpreter running ``code`` prints."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_observe_imports_neither_the_planner_nor_other_commands() -> None:
    out = python(
        "import sys; from reconciler import cli; cli.parser(['observe']); "
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(out.split())
    assert "reconciler.commands.observe" in loaded
    for absent in ("reconciler.commands.plan", "reconciler.commands.hosts",
                   "reconciler.commands.gitops", "reconciler.core.planner",
                   "reconciler.core.render", "reconciler.apply",
                   "reconciler.core.plan", "reconciler.hosts.memory",
                   "reconciler.hosts.bootstrap", "reconciler.lab.lab",
                   # the SSH transport loads once the hosts' connects are under way
                   "paramiko", "reconciler.hosts.ssh"):  # fmt: skip
        assert absent not in loaded


def test_the_transport_loads_paramiko_without_invoke_and_leaves_invoke_importable() -> None:
    out = python(
        "import sys, importlib.util; from reconciler.hosts import ssh; import paramiko.config; "
        "print('invoke' in sys.modules, paramiko.config.invoke is None, "
        "importlib.util.find_spec('invoke') is not None)"
    )
    loaded, disabled, findable = out.split()
    assert (loaded, disabled) == ("False", "True")
    if findable == "True":  # installed (paramiko depends on it): still importable afterwards
        after = "from reconciler.hosts import ssh; import invoke; print(invoke.__name__)"
        assert python(after).strip() == "invoke"


def test_help_lists_every_command_without_importing_them() -> None:
    out = python(
        "import sys; from reconciler import cli; text = cli.parser([]).format_help(); "
        "print(sorted(m for m in sys.modules if m.startswith('reconciler.commands.'))); "
        "print(text)"
    )
    first, _, text = out.partition("\n")
    assert first == "[]"
    for c in cli.COMMANDS:
        assert c.name in text
