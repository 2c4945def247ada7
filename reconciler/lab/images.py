"""The example fleet's images, built from busybox-static and pushed to the lab's registry.

No Docker and no download: each image is busybox plus a start script, written
as an OCI layout (:mod:`providers.images.layout`) and pushed with skopeo to
the registry the lab runs at ``192.0.2.2:5000``, where the agents pull them
like any registry image. Versions ``1.0`` and ``2.0`` differ only in what they
answer, so a rolling deploy is visible from outside.

- ``examples/hello``: busybox httpd on ``$PORT`` (8080) over IPv4 and IPv6,
  answering ``$GREETING (version)`` at ``/`` and ``ok`` at ``/healthz``;
  ``/cgi-bin/replay?region=R`` (or ``instance=ID``, ``elsewhere=true``) answers
  with that ``fly-replay`` header, and a replayed request names the machine.
- ``examples/echo``: a TCP echo server on port 7000, and on port 7001 a
  probe that connects *out*: send it ``ADDRESS PORT`` and it answers with what
  ``ADDRESS:PORT`` said to ``ping`` (how the lab tests show a machine reaching
  a machine on another host over the mesh).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fleet.errors import LabError
from providers.images import layout, samples
from reconciler.lab.topology import MGMT_NS

REGISTRY = "192.0.2.2:5000"
VERSIONS = ("1.0", "2.0")

HELLO = """#!/bin/sh
mkdir -p /tmp/www/cgi-bin
echo "${GREETING:-hello} (version %s)" > /tmp/www/index.html
echo ok > /tmp/www/healthz
ln -s /bin/replay /tmp/www/cgi-bin/replay
trap 'kill $pid; exit 0' INT TERM
httpd -f -p "[::]:${PORT:-8080}" -h /tmp/www &
pid=$!
echo "hello: listening on ${PORT:-8080}"
wait $pid
"""

# /cgi-bin/replay?QUERY answers with `fly-replay: QUERY` (region=R, instance=ID,
# elsewhere=true); a replayed request (it carries fly-replay-src) is answered instead,
# naming the machine (its private address, as /proc/net/if_inet6 writes it) and the source.
REPLAY = r"""#!/bin/sh
[ "${CONTENT_LENGTH:-0}" -gt 0 ] && cat > /dev/null
me=
while read -r a _; do
  case $a in fe80*|00000000000000000000000000000001) ;; *) me=$a; break ;; esac
done < /proc/net/if_inet6
if [ -n "$HTTP_FLY_REPLAY_SRC" ]; then
  printf 'Content-Type: text/plain\r\n\r\nreplayed to %s from %s\n' "$me" "$HTTP_FLY_REPLAY_SRC"
else
  printf 'fly-replay: %s\r\nContent-Type: text/plain\r\n\r\nfrom %s: replay %s\n' \
    "$QUERY_STRING" "$me" "$QUERY_STRING"
fi
"""

ECHO = """#!/bin/sh
trap 'exit 0' INT TERM
echo "echo: listening on 7000 (probe on 7001)"
nc -ll -p 7001 -e /bin/probe &
nc -ll -p 7000 -e cat &
wait $!
"""

PROBE = """#!/bin/sh
read addr port
echo ping | nc -w 3 "$addr" "$port"
"""

EXTRA_APPLETS = ("mkdir", "nc", "ln")


def _image(
    script: str, text: str, config: dict[str, Any], extra: dict[str, str] | None = None
) -> layout.ImageSpec:
    """busybox (with the applets the scripts use) plus a start script and ``extra`` scripts."""
    base = samples.base_entries() + layout.busybox_entries(Path("/bin/busybox"), EXTRA_APPLETS)
    scripts = {script: text, **(extra or {})}
    top = [layout.file(path, body, 0o755) for path, body in scripts.items()]
    return layout.ImageSpec([layout.layer_tar(base), layout.layer_tar(top)], config)


def hello_image(version: str) -> layout.ImageSpec:
    config = {
        "Entrypoint": ["/bin/hello"],
        "Env": ["PORT=8080", "PATH=/bin"],
        "ExposedPorts": {"8080/tcp": {}},
    }
    return _image("bin/hello", HELLO % version, config, {"bin/replay": REPLAY})


def echo_image() -> layout.ImageSpec:
    config = {"Entrypoint": ["/bin/echo-server"], "Env": ["PATH=/bin"]}
    return _image("bin/echo-server", ECHO, config, {"bin/probe": PROBE})


def push_all(registry: str = REGISTRY) -> list[str]:
    """Build and push every example image; returns the references pushed."""
    pushed = []
    images = [(f"examples/hello:{v}", hello_image(v)) for v in VERSIONS]
    images += [(f"examples/echo:{v}", echo_image()) for v in VERSIONS]
    with tempfile.TemporaryDirectory(prefix="fleet-lab-images-") as tmp:
        for name, spec in images:
            directory = Path(tmp) / name.replace("/", "_").replace(":", "_")
            layout.write_oci_layout(directory, spec, "latest")
            ref = f"{registry}/{name}"
            result = subprocess.run(
                ["ip", "netns", "exec", MGMT_NS, "skopeo", "copy", "--quiet",
                 "--dest-tls-verify=false", f"oci:{directory}:latest", f"docker://{ref}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise LabError(f"pushing {ref}: {result.stderr.strip()}")
            pushed.append(ref)
    return pushed
