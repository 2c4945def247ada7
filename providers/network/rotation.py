"""Staged WireGuard key rotation as data: which step runs on which host, in what order.

Pure. A WireGuard interface has one private key, and on every other host a
peer is *named* by its public key; the cryptokey routing table gives each
allowed IP to exactly one peer. So a host's key cannot change everywhere at
once, and the stages below are ordered so that no connection breaks:

0. (before this plan) the rotating host generates a *staged* key on the host
   (:func:`providers.network.wgkeys.ensure_key` with ``staged=True``); only its
   public half is observed. The plan needs it as input.
1. ``introduce``: every other host adds the new key as a peer with the
   endpoint, **no allowed IPs and no keepalive**: it can complete a handshake
   but carries no traffic, and it does not send handshakes the rotating host
   (still on its old key) would ignore.
2. ``switch``: the rotating host sets its private key to the staged one.
   Sessions made with the old key still *receive* (WireGuard expires only the
   sending side), so other hosts keep sending to it; its own next packet makes
   a handshake with the new key, which the others accept (step 1).
3. ``move``: every other host gives the host's allowed IPs (and keepalive)
   to the new peer; one ``wg set`` moves them atomically off the old peer.
   Between 2 and 3, packets *from* the rotating host that arrive on the new
   session are dropped by the allowed-IPs check: run 3 right after 2 (the
   window is the time of one ``wg set`` per host; TCP retransmits across it).
4. ``retire``: every other host removes the old peer; the old key is gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from providers.network import wireguard


class StepKind(StrEnum):
    PEER = "peer"  # a wg set peer operation on ``host``
    SWITCH_KEY = "switch-key"  # ``host`` takes its staged private key


@dataclass(frozen=True, slots=True)
class RotationStep:
    host: str
    kind: StepKind
    op: wireguard.PeerOp | None = None


@dataclass(frozen=True, slots=True)
class RotationStage:
    """Steps that may run in parallel; a stage starts when the previous one finished."""

    name: str
    steps: tuple[RotationStep, ...]
    run_immediately_after_previous: bool = False


def rotation_stages(
    rotating: wireguard.Peer, new_key: str, others: Iterable[str]
) -> tuple[RotationStage, ...]:
    """The stages that move every other host from ``rotating.public_key`` to ``new_key``.

    ``rotating`` is the host's current desired peer (old key, endpoint,
    allowed IPs); ``others`` the hosts that have it as a peer.
    """
    if new_key == rotating.public_key:
        return ()
    hosts = sorted(set(others) - {rotating.host})
    introduce = tuple(
        RotationStep(
            host,
            StepKind.PEER,
            wireguard.PeerOp(
                wireguard.OpKind.ADD,
                rotating.host,
                new_key,
                endpoint=rotating.endpoint,
                allowed_ips=(),
                keepalive=0,
                reason="key rotation: introduce the new key",
            ),
        )
        for host in hosts
    )
    switch = (RotationStep(rotating.host, StepKind.SWITCH_KEY),)
    move = tuple(
        RotationStep(
            host,
            StepKind.PEER,
            wireguard.PeerOp(
                wireguard.OpKind.UPDATE,
                rotating.host,
                new_key,
                allowed_ips=rotating.allowed_ips,
                keepalive=rotating.keepalive,
                reason="key rotation: move allowed IPs to the new key",
            ),
        )
        for host in hosts
    )
    retire = tuple(
        RotationStep(
            host,
            StepKind.PEER,
            wireguard.PeerOp(
                wireguard.OpKind.REMOVE,
                rotating.host,
                rotating.public_key,
                reason="key rotation: retire the old key",
            ),
        )
        for host in hosts
    )
    return (
        RotationStage("introduce", introduce),
        RotationStage("switch", switch),
        RotationStage("move", move, run_immediately_after_previous=True),
        RotationStage("retire", retire),
    )
