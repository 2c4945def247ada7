"""A registry source over the Distribution v2 HTTP API (``docker://`` references).

Resolves a tag or a pinned digest to a manifest (following a multi-arch index
to the host's platform), verifies every manifest against its digest, and
streams blobs to the cache (which verifies them). Authentication: anonymous,
HTTP basic, or the bearer-token dance (``WWW-Authenticate: Bearer realm=...``
-> token endpoint -> retry) that Docker Hub and ``docker-registry`` speak.
Plain HTTP is used only for hosts listed as insecure (loopback by default).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO

from fleet.errors import ImageError
from providers.images import oci
from providers.images.reference import ImageRef
from providers.images.sources import Resolved

log = logging.getLogger(__name__)

ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST])
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT = 30.0


class _SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects (registries send blobs to storage hosts) but never carry our
    Authorization header to another host."""

    def redirect_request(  # type: ignore[override]  # noqa: PLR0917
        self,
        req: urllib.request.Request,
        fp: BinaryIO,
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]
        if (
            new is not None
            and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc
        ):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_SameHostAuthRedirect())


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM_RE.findall(rest))


class RegistrySource:
    """One image in one repository of a registry."""

    def __init__(
        self,
        ref: ImageRef,
        *,
        insecure_hosts: tuple[str, ...] = (),
        username: str = "",
        password: str = "",
        timeout: float = TIMEOUT,
    ) -> None:
        self.ref = ref
        host = ref.registry.rsplit(":", 1)[0] if not ref.registry.startswith("[") else ref.registry
        scheme = "http" if host in insecure_hosts else "https"
        self.base = f"{scheme}://{ref.registry}/v2/{ref.repository}"
        self.username = username
        self.password = password
        self.timeout = timeout
        self.token = ""
        self.where = str(ref)

    # -- HTTP with auth --------------------------------------------------

    def _request(self, url: str, accept: str = "", method: str = "GET") -> urllib.request.Request:
        req = urllib.request.Request(url, method=method)  # noqa: S310 - base is http(s) only
        if accept:
            req.add_header("Accept", accept)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        elif self.username:
            cred = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
        return req

    def _open(self, url: str, accept: str = "") -> BinaryIO:
        for attempt in range(2):
            try:
                resp = _OPENER.open(self._request(url, accept), timeout=self.timeout)
                return resp  # type: ignore[no-any-return]
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the connection
                if exc.code == 401 and attempt == 0 and self._authenticate(exc):
                    continue
                if exc.code == 404:
                    raise ImageError(f"{self.where}: not found in the registry ({url})") from exc
                raise ImageError(f"{self.where}: registry answered {exc.code} for {url}") from exc
            except (urllib.error.URLError, OSError) as exc:
                raise ImageError(f"{self.where}: registry unreachable: {exc}") from exc
        raise ImageError(f"{self.where}: registry refused our credentials")

    def _authenticate(self, err: urllib.error.HTTPError) -> bool:
        scheme, params = parse_challenge(err.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            return bool(self.username) and not self.token
        if scheme != "bearer" or "realm" not in params:
            return False
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        if urllib.parse.urlsplit(params["realm"]).scheme not in ("http", "https"):
            raise ImageError(f"{self.where}: token realm {params['realm']!r} is not http(s)")
        url = params["realm"] + "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)  # noqa: S310 - scheme checked above
        if self.username:
            cred = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                doc = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ImageError(f"{self.where}: token request to {params['realm']} failed") from exc
        self.token = str(doc.get("token") or doc.get("access_token") or "")
        return bool(self.token)

    # -- ImageSource -----------------------------------------------------

    def _manifest(self, reference: str) -> tuple[bytes, str]:
        with self._open(f"{self.base}/manifests/{reference}", ACCEPT) as resp:
            data = resp.read(8 << 20)
            header = resp.headers.get("Docker-Content-Digest", "")  # type: ignore[attr-defined]
        digest = oci.sha256_digest(data)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"{self.where}: manifest {reference} has digest {digest}; refused")
        if header and header != digest:
            raise ImageError(f"{self.where}: registry says {header}, content is {digest}")
        return data, digest

    def resolve(self, want: oci.Platform) -> Resolved:
        data, digest = self._manifest(self.ref.digest or self.ref.tag)
        for _depth in range(3):
            if oci.media_type_of(data) not in oci.INDEX_TYPES:
                return Resolved(digest, data, oci.parse_manifest(data))
            entry = oci.pick_platform(oci.parse_index(data), want)
            data, digest = self._manifest(entry.digest)
        raise ImageError(f"{self.where}: indexes nested too deeply")

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:
        return self._open(f"{self.base}/blobs/{desc.digest}")

    def close(self) -> None:
        pass
