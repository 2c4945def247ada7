"""The guest init: PID 1 of every microVM, injected by the agent through the initramfs.

:mod:`launch` decides, on the host and purely, what the app runs as (the
``docker run`` meaning of an OCI config plus the App's overrides); :mod:`conf`
encodes that for the init; :mod:`build` compiles ``init.c`` into a static
binary; :mod:`cpio` writes the initramfs archives; :mod:`console` parses what
the init reports on the serial console.
"""
