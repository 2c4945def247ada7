"""Load a fleet from a directory or from a Git commit, collecting every error.

A fleet is every ``*.yaml`` / ``*.yml`` file under the fleet directory (hidden
directories such as ``.git`` or ``.github`` are skipped) that a
``.fleetignore`` at the fleet root does not exclude. Each document is parsed
(:mod:`fleet.yamlsrc`), checked against its kind's schema (:mod:`fleet.schema`),
built into a frozen object (:mod:`fleet.build`) and then checked across
documents (:mod:`fleet.semantics`). All errors are collected and raised
together as :class:`~fleet.errors.ModelErrors`.

At a Git ref the tree is read straight from the object database with
gitpython: no checkout, so it works on bare repositories (the pre-receive hook
validates a pushed commit before the ref moves).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fleet import build, ignore, model, schema, semantics, yamlsrc
from fleet.errors import FleetError, Location, ModelError, ModelErrors

SUFFIXES = (".yaml", ".yml")
GIT_STATUS = (
    "git",
    "--no-optional-locks",
    "status",
    "--porcelain=v2",
    "--branch",
    "-unormal",
    "-z",
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a loaded fleet came from: Git commit (if any) and whether the tree was dirty."""

    root: str
    commit: str | None
    dirty: bool
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Loaded:
    fleet: model.Fleet
    origin: Origin


def _display(root: str, rel: str) -> str:
    return rel if root in ("", ".") else f"{root.rstrip('/')}/{rel}"


def _walk_dir(root: Path) -> Iterator[tuple[str, bytes]]:
    rules = ignore.parse(_read_text(root / ignore.IGNORE_FILE))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for filename in sorted(filenames):
            if not filename.endswith(SUFFIXES):
                continue
            rel = (base / filename).relative_to(root).as_posix()
            if ignore.ignored(rules, rel):
                continue
            yield rel, (base / filename).read_bytes()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _walk_tree(tree: Any) -> Iterator[tuple[str, bytes]]:
    rules: tuple[ignore.Rule, ...] = ()
    for item in tree.blobs:
        if item.name == ignore.IGNORE_FILE:
            rules = ignore.parse(item.data_stream.read().decode("utf-8", "replace"))
    files = []
    for item in tree.traverse(prune=lambda i, d: i.type == "tree" and i.name.startswith(".")):
        if item.type != "blob" or not item.name.endswith(SUFFIXES):
            continue
        rel = os.path.relpath(item.path, tree.path) if tree.path else item.path
        if any(part.startswith(".") for part in rel.split("/")[:-1]):
            continue
        if not ignore.ignored(rules, rel):
            files.append((rel, item))
    for rel, item in sorted(files, key=lambda f: f[0]):
        yield rel, item.data_stream.read()


def parse_files(files: Iterator[tuple[str, bytes]], root: str) -> model.Fleet:
    """Parse, validate and assemble a fleet from ``(relative path, bytes)`` pairs."""
    errors: list[ModelError] = []
    entries: list[semantics.Entry] = []
    broken: set[model.Kind] = set()
    for rel, data in files:
        shown = _display(root, rel)
        try:
            docs = yamlsrc.parse(data, shown)
        except ModelError as exc:
            errors.append(exc)
            continue
        if not docs or all(d.value is None for d in docs):
            errors.append(ModelError(Location(shown, 1, 1), "file holds no fleet documents"))
            continue
        for doc in docs:
            if doc.value is None and len(docs) > 1:
                continue  # an empty document between `---` separators
            kind, problems = schema.envelope(doc)
            if kind is None:
                errors += problems
                continue
            problems = schema.validate(doc, kind)
            if problems:
                errors += problems
                broken.add(kind)
                continue
            source = model.Source(shown, doc.start[0])
            obj = build.build(kind, doc.value, source)
            entries.append(semantics.Entry(kind, doc.value["metadata"]["name"], obj, doc))
    fleet, problems = semantics.check(entries, frozenset(broken))
    errors += problems
    if errors or fleet is None:
        raise ModelErrors(errors)
    return fleet


def load_dir(path: str | os.PathLike[str]) -> model.Fleet:
    """Load the fleet in a directory as it is on disk."""
    root = Path(path)
    if not root.is_dir():
        raise FleetError(f"{path}: fleet directory does not exist")
    return parse_files(_walk_dir(root), os.fspath(path))


def load_git(path: str | os.PathLike[str], ref: str, subdir: str = "") -> Loaded:
    """Load the fleet at ``ref`` of the repository that holds ``path`` (bare or not).

    ``subdir`` names the fleet's folder inside a bare repository.
    """
    repo, sub = _open_repo(path)
    sub = "/".join(p for p in (sub, subdir.strip("/")) if p)
    try:
        commit = repo.commit(ref)
    except Exception as exc:  # gitpython raises several unrelated types here
        raise FleetError(f"{path}: cannot resolve Git ref {ref!r}: {_first_line(exc)}") from exc
    tree = commit.tree
    if sub:
        try:
            tree = tree / sub
        except KeyError:
            raise FleetError(
                f"{path}: {sub!r} does not exist at {ref} ({commit.hexsha[:12]})"
            ) from None
    # Paths in messages are relative to the repository: they name the same file
    # for everyone, whatever the clone's location.
    fleet = parse_files(_walk_tree(tree), sub)
    origin = Origin(root=os.fspath(path), commit=commit.hexsha, dirty=False, ref=ref)
    return Loaded(replace(fleet, commit=commit.hexsha), origin)


def load(path: str | os.PathLike[str], ref: str | None = None, *, git_state: bool = True) -> Loaded:
    """Load from the work tree (recording HEAD and dirtiness if in Git) or from ``ref``.

    ``git_state=False`` skips asking Git about the work tree (commands that only
    need the hosts, like ``observe``, do not record a commit).
    """
    if ref is not None:
        return load_git(path, ref)
    fleet = load_dir(path)
    commit, dirty = _work_tree_state(path) if git_state else (None, False)
    return Loaded(replace(fleet, commit=commit), Origin(os.fspath(path), commit, dirty))


def _open_repo(path: str | os.PathLike[str]) -> tuple[Any, str]:
    # gitpython costs ~80 ms to import; plain directory loads outside Git skip it.
    import git  # noqa: PLC0415

    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise FleetError(f"{path}: not inside a Git repository") from exc
    if repo.bare:
        return repo, ""
    top = Path(repo.working_tree_dir or ".").resolve()
    sub = Path(path).resolve().relative_to(top).as_posix()
    return repo, "" if sub == "." else sub


def _maybe_git(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` or a parent could be a Git repository (what gitpython searches).

    A work tree has ``.git`` (a directory, or a file for worktrees and
    submodules) in it or a parent; a bare repository is a directory with
    ``HEAD`` and ``objects``. Without either, running git (or, for a ref,
    importing gitpython: ~80 ms) only to hear "not a repository" is skipped.
    """
    here = Path(path).resolve()
    for d in (here, *here.parents):
        if (d / ".git").exists() or ((d / "HEAD").is_file() and (d / "objects").is_dir()):
            return True
    return False


def _work_tree_state(path: str | os.PathLike[str]) -> tuple[str | None, bool]:
    """HEAD's commit and whether the fleet directory differs from it, from one ``git status``.

    One process (~5 ms) instead of importing gitpython (~80 ms, far more on a
    loaded machine) and its half-dozen git processes: every ``plan`` and
    ``apply`` from a work tree pays this. Dirty means anything ``git status``
    lists under the fleet directory: staged, unstaged or untracked (ignored
    files are not listed); changes elsewhere in the repository do not count.
    """
    if not _maybe_git(path):
        return None, False
    try:
        out = subprocess.run(
            # no optional locks: a plan never holds up the operator's own git commands;
            # -unormal: untracked files count whatever status.showUntrackedFiles says
            [*GIT_STATUS, "."],
            cwd=path,
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        raise FleetError(f"{path}: cannot run git: {exc.strerror}") from exc
    if out.returncode != 0:
        lines = out.stderr.decode(errors="replace").strip().splitlines()
        message = lines[0] if lines else f"exit status {out.returncode}"
        if "not a git repository" in message or "must be run in a work tree" in message:
            return None, False
        raise FleetError(f"{path}: git status failed: {message}")
    head: str | None = None
    dirty = False
    for entry in out.stdout.split(b"\0"):
        if entry.startswith(b"# branch.oid "):
            oid = entry[len(b"# branch.oid ") :].decode()
            head = None if oid == "(initial)" else oid
        elif entry and not entry.startswith(b"#"):
            dirty = True
    return head, dirty or head is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
