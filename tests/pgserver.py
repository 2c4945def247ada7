"""A throwaway PostgreSQL server for tests: a real cluster, on a unix socket only.

Debian's server binaries (package ``postgresql``, installed by scripts/setup)
are run straight from ``/usr/lib/postgresql/*/bin``: ``initdb`` in a temporary
directory owned by the ``postgres`` OS user (initdb refuses root), started
with no TCP listener at all, stopped by its PID in teardown. Each test gets a
database of its own so tests never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Server:
    def __init__(self, root: Path, pid: int) -> None:
        self.root = root
        self.pid = pid

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.root}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing: run ./scripts/setup")
        pytest.skip("PostgreSQL is not installed (./scripts/setup installs it)")
    root = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    user = _as_postgres()
    subprocess.run(
        [*user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N"],
        check=True,
        capture_output=True,
    )
    opts = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=50"
    subprocess.run(
        [
            *user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "30",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield Server(root, pid)
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown: ends sessions, no waiting for clients
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: Server) -> str:
    return pg_server.new_database()
