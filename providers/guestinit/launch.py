"""What the app runs as: the ``docker run`` meaning of an OCI config plus the App's overrides.

Pure: an image config, the image's ``/etc/passwd`` and ``/etc/group`` text and
the overrides in; a frozen :class:`Launch` out. The rules follow Docker:

- ``--entrypoint`` replaces the image's Entrypoint *and* drops its Cmd; a
  command replaces Cmd only. argv is Entrypoint + Cmd.
- Env: image Env, then the App's env on top (later wins). PATH gets Docker's
  default when nobody set it (an explicitly empty PATH stays empty). HOSTNAME
  is the machine's hostname; HOME comes from the user's passwd entry, else ``/``.
- User: ``uid``, ``uid:gid``, ``name``, ``name:group``; a name is looked up in
  the image's /etc/passwd (an unknown name is an error); a bare uid not in
  passwd runs with gid 0; supplementary groups come from /etc/group.
- WorkingDir: the override, else the image's, else ``/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.errors import ImageError
from providers.images.oci import ImageConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the App (or ``machine run``) sets on top of the image config."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    workdir: str | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    """Exactly what the guest init executes."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    uid: int
    gid: int
    groups: tuple[int, ...]
    workdir: str


@dataclass(frozen=True, slots=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def _passwd(text: str) -> list[_PasswdEntry]:
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            out.append(_PasswdEntry(f[0], int(f[2]), int(f[3]), f[5]))
    return out


def _groups(text: str) -> list[tuple[str, int, tuple[str, ...]]]:
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[2].isdigit():
            members = tuple(m for m in f[3].split(",") if m)
            out.append((f[0], int(f[2]), members))
    return out


def resolve_user(spec: str, passwd: str, group: str) -> tuple[int, int, tuple[int, ...], str]:
    """(uid, gid, supplementary groups, home) for a Docker USER string."""
    users = _passwd(passwd)
    groups = _groups(group)
    name_part, _, group_part = (spec or "0").partition(":")
    entry: _PasswdEntry | None = None
    if name_part.isdigit():
        uid = int(name_part)
        entry = next((u for u in users if u.uid == uid), None)
    else:
        entry = next((u for u in users if u.name == name_part), None)
        if entry is None:
            raise ImageError(f"user {name_part!r} not found in the image's /etc/passwd")
        uid = entry.uid
    gid = entry.gid if entry else 0
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = next((g for g in groups if g[0] == group_part), None)
            if match is None:
                raise ImageError(f"group {group_part!r} not found in the image's /etc/group")
            gid = match[1]
    extra: tuple[int, ...] = ()
    if entry is not None and not group_part:
        extra = tuple(sorted({g[1] for g in groups if entry.name in g[2]} - {gid}))
    home = entry.home if entry and entry.home else "/"
    return uid, gid, (gid, *extra), home


def _merge_env(base: tuple[str, ...], extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in base:
        key, sep, value = item.partition("=")
        if key:
            env[key] = value if sep else ""
    for key, value in extra:
        env[key] = value
    return env


def compute(
    config: ImageConfig,
    overrides: Overrides,
    *,
    passwd: str = "",
    group: str = "",
    hostname: str = "",
) -> Launch:
    """The launch of an app from its image config and overrides (Docker's rules)."""
    if overrides.entrypoint is not None:
        entrypoint = overrides.entrypoint
        cmd = overrides.cmd or ()
    else:
        entrypoint = config.entrypoint or ()
        cmd = overrides.cmd if overrides.cmd is not None else (config.cmd or ())
    argv = tuple(entrypoint) + tuple(cmd)
    if not argv:
        raise ImageError("no command to run: the image has no Entrypoint or Cmd and none was given")
    user = overrides.user if overrides.user is not None else config.user
    uid, gid, groups, home = resolve_user(user, passwd, group)
    env = _merge_env(config.env, overrides.env)
    env.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        env.setdefault("HOSTNAME", hostname)
    env.setdefault("HOME", home)
    workdir = overrides.workdir or config.working_dir or "/"
    if not workdir.startswith("/"):
        workdir = "/" + workdir
    return Launch(
        argv=argv,
        env=tuple(f"{k}={v}" for k, v in env.items()),
        uid=uid,
        gid=gid,
        groups=groups,
        workdir=workdir,
    )
