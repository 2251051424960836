"""Outbound URL safety (SSRF guard) for the webhook endpoints consumers register.

A consumer-supplied URL must not make the gateway reach into its own network: loopback,
private (RFC 1918, IPv6 ULA), link-local (which holds cloud metadata services such as
``169.254.169.254``), carrier-grade NAT, multicast, reserved and unspecified addresses are
refused, in short every address that is not ``ipaddress``'s ``is_global``; IPv4-mapped IPv6
addresses are judged by their IPv4 address. The operator turns the guard off with
``TILLGATE_WEBHOOK_ALLOW_PRIVATE=true`` (development, receivers on a private network).

Two checks, because DNS can change between them: :func:`check_url` when an endpoint is saved
(the URL's shape, and the host when it is an address literal or a local name), and
:func:`resolve` before every delivery, which resolves the host and refuses it if *any* address
is not global. The caller then connects to the address it checked (not the name again), so a
second, rebinding DNS answer cannot send the request elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urlsplit

#: Host names that always mean this machine or its cloud's metadata service.
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
                         "metadata", "metadata.google.internal", "instance-data"})

#: Seconds a resolved, checked answer is reused.
RESOLVE_TTL = 30.0


class UrlRefused(ValueError):
    """The URL is not one the gateway will deliver to; ``reason`` is a stable snake_case code
    (``invalid_url``, ``unsupported_scheme``, ``credentials_in_url``, ``private_address``,
    ``unresolvable_host``) and the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (the only kind deliveries may reach)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool) -> str:
    """Check an endpoint URL's shape and, without DNS, its host; return it unchanged.

    Rules: absolute ``http`` or ``https`` URL with a host, no ``user:password@``, at most 2,000
    characters; with the guard on, the host must not be a non-global address literal or a local
    name (``localhost``, ``*.localhost``, ``*.internal``, metadata names).

    Raises:
        UrlRefused: the URL breaks one of the rules.
    """
    if len(url) > 2000:
        raise UrlRefused("invalid_url", "the URL is longer than 2,000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("invalid_url", f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("unsupported_scheme", "webhook URLs must be http:// or https://")
    host = parts.hostname
    if not host:
        raise UrlRefused("invalid_url", "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("credentials_in_url", "put no credentials in the URL; deliveries are signed instead")
    if port == 0:
        raise UrlRefused("invalid_url", "port 0 is not a valid port")
    if allow_private:
        return url
    literal = _literal(host)
    if literal is not None:
        if not is_public(literal):
            raise UrlRefused("private_address", f"{host} is not a public address")
    elif host.rstrip(".").lower() in LOCAL_NAMES or host.rstrip(".").lower().endswith((".localhost", ".internal")):
        raise UrlRefused("private_address", f"{host} names this machine or its network")
    return url


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class Resolver:
    """Resolves a delivery's host and checks every address (:func:`is_public`), caching checked
    answers for :data:`RESOLVE_TTL` seconds."""

    def __init__(self, *, allow_private: bool, ttl: float = RESOLVE_TTL) -> None:
        self.allow_private = allow_private
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, str]] = {}

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to for ``host:port`` (an IP literal, IPv6 without brackets).

        Raises:
            UrlRefused: ``unresolvable_host`` (no DNS answer) or ``private_address`` (any
                answer is not a public address while the guard is on).
        """
        literal = _literal(host)
        if literal is not None:
            if not self.allow_private and not is_public(literal):
                raise UrlRefused("private_address", f"{host} is not a public address")
            return str(literal)
        key = (host.lower(), port)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UrlRefused("unresolvable_host", f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not addresses:
            raise UrlRefused("unresolvable_host", f"{host} has no address")
        if not self.allow_private:
            refused = [str(address) for address in addresses if not is_public(address)]
            if refused:
                raise UrlRefused("private_address", f"{host} resolves to non-public {', '.join(refused)}")
        chosen = str(addresses[0])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + self.ttl, chosen)
        return chosen
