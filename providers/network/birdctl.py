"""The BIRD 2 I/O shell: run the daemon, change its config without a restart, observe it.

One BIRD per host (or lab router) in the foreground, with its own control
socket and PID file: ``bird -f -c CONF -s SOCK -P PIDFILE``, so the process
we start is the one we stop. A new config is written beside the live one,
checked with ``bird -p -c``, and only then moved into place and loaded with
``birdc configure``: a config BIRD refuses never replaces the last good one,
and sessions are never restarted by us (BIRD itself decides which protocols
a reconfiguration touches; a changed static route list does not reset BGP).
Observations are a command plus a parser (:mod:`providers.network.birdparse`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import ProviderError
from providers.network import birdparse, netexec

log = logging.getLogger(__name__)

START_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Bird:
    """A BIRD daemon this process started, and where its files are."""

    directory: Path
    netns: str | None
    process: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)

    @property
    def config(self) -> Path:
        return self.directory / "bird.conf"

    @property
    def socket(self) -> Path:
        return self.directory / "bird.ctl"

    @property
    def pidfile(self) -> Path:
        return self.directory / "bird.pid"

    @property
    def candidate(self) -> Path:
        return self.directory / "bird.conf.new"


def check_config(path: Path) -> None:
    """``bird -p -c PATH``: parse only; raises ProviderError with BIRD's message."""
    result = netexec.run(["bird", "-p", "-c", str(path)], check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise ProviderError(f"BIRD refused {path.name}: {message[-1] if message else 'error'}")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def birdc(bird: Bird, *command: str) -> str:
    """One ``birdc -s SOCK`` command; its output as text."""
    return netexec.run(["birdc", "-s", str(bird.socket), *command], netns=bird.netns).stdout


def start(
    directory: Path, config_text: str, netns: str | None = None, *, detach: bool = False
) -> Bird:
    """Check ``config_text``, then start BIRD in the foreground in ``netns``.

    ``detach`` gives BIRD its own session, so it outlives the short process
    that started it (the host agent's ``apply``); ``bird.pid`` names it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    bird = Bird(directory, netns)
    _write(bird.candidate, config_text)
    check_config(bird.candidate)
    os.replace(bird.candidate, bird.config)
    log_path = directory / "bird.log"
    with open(log_path, "ab") as out:
        try:
            process = subprocess.Popen(
                netexec.in_netns(
                    [
                        "bird",
                        "-f",
                        "-c",
                        str(bird.config),
                        "-s",
                        str(bird.socket),
                        "-P",
                        str(bird.pidfile),
                    ],
                    netns,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        except OSError as exc:
            raise ProviderError(f"bird: {exc}") from exc
    bird = Bird(directory, netns, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProviderError(f"bird exited with {process.returncode}; see {log_path}")
        if bird.socket.exists():
            result = netexec.run(
                ["birdc", "-s", str(bird.socket), "show", "status"], netns=netns, check=False
            )
            if result.returncode == 0 and "Daemon is up and running" in result.stdout:
                return bird
        time.sleep(0.02)
    stop(bird)
    raise ProviderError(f"bird did not come up in {START_TIMEOUT_S:.0f} s; see {log_path}")


def apply_config(bird: Bird, config_text: str) -> bool:
    """Make ``config_text`` live by ``birdc configure``; False when it already is.

    The candidate is checked first; if BIRD refuses it (at the check or at
    ``configure``), the last good config stays in place and live, and
    ProviderError says why.
    """
    if bird.config.exists() and bird.config.read_text() == config_text:
        return False
    _write(bird.candidate, config_text)
    check_config(bird.candidate)
    previous = bird.config.read_text() if bird.config.exists() else None
    os.replace(bird.candidate, bird.config)
    out = birdc(bird, "configure")
    if birdparse.configure_ok(out):
        log.info("bird reconfigured (%s)", bird.directory)
        return True
    if previous is not None:
        _write(bird.config, previous)
        birdc(bird, "configure")
    raise ProviderError(f"birdc configure failed: {out.strip().splitlines()[-1:]}")


def protocols_command(bird: Bird) -> list[str]:
    return ["birdc", "-s", str(bird.socket), "show", "protocols", "all"]


def routes_command(bird: Bird) -> list[str]:
    return ["birdc", "-s", str(bird.socket), "show", "route", "all"]


def protocols(bird: Bird) -> tuple[birdparse.Protocol, ...]:
    return birdparse.parse_protocols(netexec.run(protocols_command(bird), netns=bird.netns).stdout)


def routes(bird: Bird) -> tuple[birdparse.Route, ...]:
    return birdparse.parse_routes(netexec.run(routes_command(bird), netns=bird.netns).stdout)


def stop(bird: Bird) -> None:
    """Stop the BIRD we started (by its PID); its routes leave the upstream at once."""
    process = bird.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    with contextlib.suppress(FileNotFoundError):
        bird.socket.unlink()
