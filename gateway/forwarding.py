"""Forwarding headers: what the gateway tells a node about the client (``X-Forwarded-For``,
``-Proto``, ``-Host``), and whose word it takes for them.

A client can write any header it likes, so at the edge (a peer outside
``trusted_proxies``) the node gets only what the gateway saw itself: the peer's address,
the listener's scheme and the request's host. The client's own ``X-Forwarded-*`` values
are replaced, and ``X-Real-IP`` and ``Forwarded`` (RFC 7239) are dropped. Only a peer
inside ``trusted_proxies`` (a load balancer in front) is believed: its chain is extended
with its own address, its proto and host are kept, and the client is the rightmost
address of the chain that no trusted proxy added. That is nginx's ``set_real_ip_from``
with ``real_ip_recursive on``, and Envoy's ``xff_num_trusted_hops`` by address rather
than by count.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every header this module decides about (lower case).
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-real-ip", b"forwarded"})


class TrustedProxies:
    """The peers whose forwarding headers are believed (``trusted_proxies``, CIDRs)."""

    __slots__ = ("_cidrs", "_networks")

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._cidrs = tuple(cidrs)
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in self._cidrs)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __repr__(self) -> str:
        return f"<TrustedProxies {', '.join(self._cidrs) or 'none'}>"

    def trusts(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client(self, peer: str, chain: str | None) -> str:
        """The client's address: the peer, or behind trusted proxies the rightmost address
        of their ``X-Forwarded-For`` chain that none of them added."""
        if not chain or not self.trusts(peer):
            return peer
        for hop in reversed(chain.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            if not self.trusts(hop):
                return hop if _is_address(hop) else peer
        return peer


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ForwardingHeaders:
    """One request's forwarding headers, collected while its headers are copied, then
    written as the node gets them (``fields``)."""

    __slots__ = ("chain", "host", "kept", "proto")

    def __init__(self) -> None:
        self.chain = b""
        self.proto = b""
        self.host = b""
        #: X-Real-IP and Forwarded as received (passed on only from a trusted proxy).
        self.kept: list[tuple[bytes, bytes]] = []

    def take(self, lower: bytes, name: bytes, value: bytes) -> None:
        """Record one forwarding header (``lower`` in FORWARDING)."""
        if lower == b"x-forwarded-for":
            self.chain = self.chain + b", " + value if self.chain else value
        elif lower == b"x-forwarded-proto":
            self.proto = value
        elif lower == b"x-forwarded-host":
            self.host = value
        else:
            self.kept.append((name, value))

    def fields(self, *, trusted: bool, client: str, scheme: str,
               host: bytes) -> list[tuple[bytes, bytes]]:
        """The forwarding headers the node gets. ``trusted``: the peer is a trusted proxy,
        or this is a replay of what the gateway itself recorded; ``client``: the peer's
        address ("" for a replay, whose chain is already complete)."""
        peer = client.encode()
        if trusted:
            chain = self.chain + b", " + peer if self.chain and peer else self.chain or peer
            proto = _last(self.proto) or scheme.encode()
            host = _last(self.host) or host
        else:
            chain, proto = peer, scheme.encode()
        out = [(b"X-Forwarded-For", chain)] if chain else []
        out += [(b"X-Forwarded-Proto", proto), (b"X-Forwarded-Host", host)]
        if trusted:
            out += self.kept
        return out


def _last(value: bytes) -> bytes:
    """The last element of a list-valued header (the one the nearest proxy wrote)."""
    return value.rsplit(b",", 1)[-1].strip()
