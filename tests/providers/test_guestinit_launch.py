"""Docker's run semantics computed on the host (pure): argv, env, user, working directory."""

from __future__ import annotations

import pytest

from fleet.errors import ImageError
from providers.guestinit.launch import DEFAULT_PATH, Overrides, compute, resolve_user
from providers.images.oci import ImageConfig
from providers.images.samples import GROUPS_FILE, USERS_FILE


def run(config: ImageConfig, overrides: Overrides | None = None, **kw: str):  # type: ignore[no-untyped-def]
    return compute(config, overrides or Overrides(), passwd=USERS_FILE, group=GROUPS_FILE, **kw)


@pytest.mark.parametrize(
    ("config", "overrides", "argv"),
    [
        (ImageConfig(entrypoint=("/ep", "a")), Overrides(), ("/ep", "a")),
        (ImageConfig(cmd=("cmd", "x")), Overrides(), ("cmd", "x")),
        (ImageConfig(entrypoint=("/ep",), cmd=("c",)), Overrides(), ("/ep", "c")),
        (ImageConfig(entrypoint=("/ep",), cmd=("c",)), Overrides(cmd=("o",)), ("/ep", "o")),
        # --entrypoint drops the image's Cmd, as docker run does
        (ImageConfig(entrypoint=("/ep",), cmd=("c",)), Overrides(entrypoint=("/new",)), ("/new",)),
        (
            ImageConfig(entrypoint=("/ep",), cmd=("c",)),
            Overrides(entrypoint=("/new",), cmd=("z",)),
            ("/new", "z"),
        ),
        # an explicitly empty command override keeps the entrypoint alone
        (ImageConfig(entrypoint=("/ep",), cmd=("c",)), Overrides(cmd=()), ("/ep",)),
    ],
)
def test_argv(config: ImageConfig, overrides: Overrides, argv: tuple[str, ...]) -> None:
    assert run(config, overrides).argv == argv


def test_no_command_is_an_error() -> None:
    with pytest.raises(ImageError, match="no command"):
        run(ImageConfig())


def test_env_precedence_and_defaults() -> None:
    cfg = ImageConfig(cmd=("x",), env=("FOO=image", "BAR=image", "FOO=image2", "EMPTY"))
    launch = run(cfg, Overrides(env=(("FOO", "app"), ("NEW", "1"))), hostname="m1")
    env = dict(e.split("=", 1) for e in launch.env)
    assert env["FOO"] == "app" and env["BAR"] == "image" and env["NEW"] == "1"
    assert env["EMPTY"] == ""
    assert env["PATH"] == DEFAULT_PATH
    assert env["HOSTNAME"] == "m1" and env["HOME"] == "/root"


def test_explicitly_empty_path_stays_empty() -> None:
    env = dict(e.split("=", 1) for e in run(ImageConfig(cmd=("x",), env=("PATH=",))).env)
    assert env["PATH"] == ""


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (0, 0, (0,), "/root")),
        ("1000:1000", (1000, 1000, (1000,), "/")),
        ("1000", (1000, 0, (0,), "/")),
        ("app", (1001, 1002, (1002, 1003), "/home/app")),
        ("app:root", (1001, 0, (0,), "/home/app")),
        ("1001", (1001, 1002, (1002, 1003), "/home/app")),
        ("app:7", (1001, 7, (7,), "/home/app")),
    ],
)
def test_users(user: str, expected: tuple[int, int, tuple[int, ...], str]) -> None:
    assert resolve_user(user, USERS_FILE, GROUPS_FILE) == expected


def test_unknown_user_or_group() -> None:
    with pytest.raises(ImageError, match="'ghost' not found"):
        resolve_user("ghost", USERS_FILE, GROUPS_FILE)
    with pytest.raises(ImageError, match="group 'ghosts'"):
        resolve_user("app:ghosts", USERS_FILE, GROUPS_FILE)


def test_workdir_override_wins() -> None:
    cfg = ImageConfig(cmd=("x",), working_dir="/srv")
    assert run(cfg).workdir == "/srv"
    assert run(cfg, Overrides(workdir="/data")).workdir == "/data"
    assert run(ImageConfig(cmd=("x",))).workdir == "/"
    assert run(cfg, Overrides(user="app")).env[-1] == "HOME=/home/app"
