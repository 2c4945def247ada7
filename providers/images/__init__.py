"""OCI/Docker images to read-only microVM root filesystems, without a Docker engine.

Pipeline: :mod:`reference` parses an image reference; :mod:`sources` (local
layouts and archives) or :mod:`registry` (Distribution v2) resolve it to a
manifest digest; :mod:`cache` stores verified blobs by digest; :mod:`unpack`
flattens the layers safely; :mod:`rootfs` makes one filesystem image per
manifest digest; :mod:`store` is the facade the rest of the project calls.
"""
