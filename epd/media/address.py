"""Which network addresses http(s) media may come from: the private-address rule of ``epd.media``.

An address is refused (unless ``media.allow_private_addresses``) when it is not globally routable:
loopback, private (RFC 1918, unique-local ``fc00::/7``), shared (``100.64.0.0/10``), link-local,
multicast, reserved, unspecified, documentation ranges. IPv6 forms that carry an IPv4 address
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, Teredo, NAT64 ``64:ff9b::/96``) are judged by
that IPv4 address too, so ``::ffff:127.0.0.1`` is loopback.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAMES = ("localhost",)  # RFC 6761: always loopback, whatever a resolver says


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address, or None if it is a name. Takes every numeric form the resolver takes
    (``127.1``, ``0x7f000001``, an IPv6 zone such as ``%eth0``), never asking DNS."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    try:  # the legacy IPv4 spellings inet_aton accepts; AI_NUMERICHOST: no lookup
        infos = socket.getaddrinfo(text, None, family=socket.AF_INET, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(infos[0][4][0])


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (``"loopback"``, ``"private"``, ...), or None if it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)  # the socket talks IPv4 to it: judge it as that
    for embedded in _embedded_ipv4(address):
        reason = refusal(embedded)
        if reason is not None:
            return f"{reason} ({embedded} inside {address})"
    for reason in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{reason}"):
            return reason.replace("_", "-")
    if not address.is_global:  # shared 100.64/10, documentation and benchmarking ranges, ...
        return "not globally routable"
    return None


def is_local_name(host: str) -> bool:
    """Whether ``host`` is a name that always means this machine (``localhost``, ``*.localhost``)."""
    name = host.lower().rstrip(".")
    return any(name == local or name.endswith("." + local) for local in LOCAL_NAMES)


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.sixtofour]
    if address.teredo is not None:
        found += list(address.teredo)
    if address in NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ip for ip in found if ip is not None]
