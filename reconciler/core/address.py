"""Stable plan addresses: how an operator names a resource in a plan, --target and --exclude.

Pure. Addresses never depend on which host a machine runs on or which
instance currently backs a slot, so a plan address means the same thing
across plans:

    app.<app>/machine[<region>#<index>]     one machine slot of an app
    host.<host>/image[<ref>]                an image prepared on a host
    host.<host>/route[<app>]                the edge proxy's route for an app on a host
    host.<host>/announcement[<app>]         the BGP announcement of an app's anycast prefixes
    host.<host>/<kind>[<id>]                an unmanaged resource (listed, never touched)

A selector (``--target`` / ``--exclude``) matches an address exactly or as a
prefix ending at ``/`` (``app.web`` matches all of app web); a ``host.NAME``
selector also matches every machine placed on, or moved from, that host.
"""

from __future__ import annotations

from collections.abc import Mapping

from providers import resources


def machine(app: str, slot_key: str) -> str:
    return f"app.{app}/machine[{slot_key}]"


def machine_slot(resource_id: str, spec: Mapping[str, object]) -> tuple[str, str]:
    """``(app, slot key)`` of an observed machine: from its spec, else from its id.

    Instance ids are ``APP/REGION#N@TAG``; a machine whose spec is missing (a
    half-made leftover) is still placed at its slot's address, never at a
    made-up one that several leftovers would share.
    """
    app, slot = spec.get("app"), spec.get("slot")
    if isinstance(app, str) and isinstance(slot, str):
        return app, slot
    base = resource_id.split("@", 1)[0]
    app_part, _, rest = base.partition("/")
    return app_part, (rest or resource_id)


def host_resource(host: str, kind: resources.Kind | str, ident: str) -> str:
    return f"host.{host}/{_KIND_TEXT.get(kind, kind)}[{ident}]"


# A kind's text by lookup: formatting the StrEnum itself costs twice as much, per resource.
_KIND_TEXT: Mapping[resources.Kind | str, str] = {k: k.value for k in resources.Kind}


def matches(selector: str, address: str, hosts: tuple[str, ...] = ()) -> bool:
    """Whether ``selector`` selects ``address`` (whose change touches ``hosts``)."""
    if selector == address or address.startswith(selector.rstrip("/") + "/"):
        return True
    return selector.startswith("host.") and "/" not in selector and selector[5:] in hosts
