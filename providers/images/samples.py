"""Small sample images built from busybox-static: for tests, benchmarks and trying it out.

No Docker and no download: each image is busybox plus a few files, written as an
OCI layout with :mod:`providers.images.layout`.

- ``web``: busybox httpd serving ``/www`` on a port, with a shell entrypoint
  that turns the kill signal it is told about into a clean exit status.
- ``report``: ``/bin/report`` prints how it was started (argv, ids, cwd, env)
  as ``REPORT key=value`` lines, to check OCI run semantics inside a guest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from providers.images import layout

APPLETS = (
    "sh", "httpd", "echo", "cat", "sleep", "kill", "id", "pwd", "env", "ls", "wget", "true",
    "grep",
)  # fmt: skip

USERS_FILE = """root:x:0:0:root:/root:/bin/sh
app:x:1001:1002:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUPS_FILE = """root:x:0:
app:x:1002:
extra:x:1003:app
nogroup:x:65534:
"""

# Prints how it was started; `exit ${REPORT_EXIT:-0}` lets a test make it fail.
REPORT = """#!/bin/sh
echo "REPORT argv=$0 $*"
echo "REPORT uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "REPORT cwd=$(pwd)"
echo "REPORT path=${PATH-<unset>}"
echo "REPORT home=${HOME-<unset>}"
echo "REPORT hostname=${HOSTNAME-<unset>}"
echo "REPORT foo=${FOO-<unset>} bar=${BAR-<unset>}"
( /bin/true & )  # an orphan: PID 1 must reap it
sleep 0.3
echo "REPORT zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ')"
echo "REPORT end"
exit ${REPORT_EXIT:-0}
"""

# Serves /www; on the signal named in $STOP_SIGNAL it stops httpd and exits $STOP_EXIT;
# the signal named in $IGNORE_SIGNAL is ignored (to see the kill timeout at work).
WEB = """#!/bin/sh
port=${PORT:-8080}
httpd -f -p "$port" -h /www &
pid=$!
if [ -n "$IGNORE_SIGNAL" ]; then
  trap '' "$IGNORE_SIGNAL"
else
  trap 'echo "web: got $STOP_SIGNAL"; kill $pid; exit ${STOP_EXIT:-0}' "${STOP_SIGNAL:-TERM}"
fi
echo "web: listening on $port"
wait $pid
echo "web: httpd ended"
exit 3
"""


def base_entries(busybox: Path = Path("/bin/busybox")) -> list[layout.Entry]:
    entries = layout.busybox_entries(busybox, APPLETS)
    entries += [
        layout.file("etc/passwd", USERS_FILE),
        layout.file("etc/group", GROUPS_FILE),
        layout.directory("home/app", uid=1001, gid=1002),
    ]
    return entries


def report_image(config: dict[str, Any]) -> layout.ImageSpec:
    """busybox + /bin/report, with the given OCI runtime config."""
    top = [layout.file("bin/report", REPORT, 0o755)]
    return layout.ImageSpec([layout.layer_tar(base_entries()), layout.layer_tar(top)], config)


def web_image(port: int = 8080, body: str = "hello from a microVM\n") -> layout.ImageSpec:
    """busybox httpd behind /bin/web, serving ``body`` at / on ``port``."""
    top = [
        layout.file("bin/web", WEB, 0o755),
        layout.directory("www"),
        layout.file("www/index.html", body),
    ]
    config = {
        "Entrypoint": ["/bin/web"],
        "Env": [f"PORT={port}", "PATH=/bin"],
        "ExposedPorts": {f"{port}/tcp": {}},
    }
    return layout.ImageSpec([layout.layer_tar(base_entries()), layout.layer_tar(top)], config)


def parse_report(console_text: str) -> dict[str, str]:
    """The ``REPORT`` lines of a console log as a dict (pure)."""
    out: dict[str, str] = {}
    for raw in console_text.splitlines():
        line = raw.strip()
        if not line.startswith("REPORT "):
            continue
        body = line[len("REPORT ") :]
        if body.startswith(("argv=", "path=", "home=", "hostname=", "cwd=")):
            key, _, value = body.partition("=")
            out[key] = value
        else:
            for word in body.split():
                key, _, value = word.partition("=")
                out[key] = value
    return out
