"""Where a provider's endpoint may point: only http(s) to global addresses (SSRF guard).

A provider registers a `base_url`; the exchange then makes requests to it (health checks,
and later the buyers' calls). Without a check a provider could make the exchange call its
own network: the cloud metadata service (169.254.169.254), the database, loopback admin
ports. So `resolve` refuses:

* any scheme but `http` and `https` (`file://`, `gopher://`, ...): `endpoint_scheme`;
* a URL with user info, a query or a fragment, or no host: `invalid_endpoint_url`;
* a host that does not resolve: `endpoint_unresolvable`;
* a host any of whose addresses is not global (private, loopback, link-local, the
  metadata address, unspecified, multicast, reserved, shared, IPv6 site-local, and the
  IPv4-mapped, 6to4 and Teredo forms of those): `endpoint_address_refused`. Every address
  the name resolves to is checked, not just the first: a name with one public and one
  private address is refused.

unless the host (as written in the URL, lowercased) is in the operator's allow list
(`TOKEX_ENDPOINT_ALLOW_HOSTS`, comma-separated; the tests allow `127.0.0.1,localhost`).

The provider is told what kind of address its host resolves to, not the address, nor the
resolver's error: either would let anyone who can register an endpoint map the names
and addresses of the exchange's network. The log has them.

No DNS-rebinding window: `resolve` returns the address it checked, and the caller connects
to that address (`Target.url` has it in place of the name; the `Host` header and, for
https, the TLS server name and certificate check keep the name: `Target.headers`,
`Target.extensions` for httpx). A name resolving to another address between the check and
the connection changes nothing, because the name is never resolved again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import SplitResult, urlsplit

from schemas.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

#: The cloud metadata service (AWS, GCP, Azure, OpenStack...): refused even if allowed by
#: a range, named here so the refusal says what it is.
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254"})
SCHEMES = ("http", "https")


class EndpointRefused(DomainError):
    """A base URL the exchange will not call (see the module docstring for the codes)."""

    code = "endpoint_refused"
    kind = ErrorKind.INVALID


@dataclass(frozen=True, slots=True)
class Target:
    """A checked base URL, pinned to the address that was checked."""

    scheme: str
    host: str  # as written in the URL (lowercased, IPv6 without brackets)
    port: int
    address: str  # the checked IP address the connection goes to
    path: str  # the base path, without a trailing slash

    @property
    def url(self) -> str:
        """The base URL with the checked address in place of the host name."""
        shown = f"[{self.address}]" if ":" in self.address else self.address  # IPv6
        return f"{self.scheme}://{shown}:{self.port}{self.path}"

    @property
    def headers(self) -> dict[str, str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return {"Host": host if self.port == default else f"{host}:{self.port}"}

    @property
    def server_hostname(self) -> str | None:
        """The TLS server name (SNI and certificate check) for aiohttp: the host's name."""
        return self.host if self.scheme == "https" else None

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: TLS SNI (and certificate name) of the host."""
        return {"sni_hostname": self.host} if self.scheme == "https" else {}


def parse_allow_hosts(value: str | Iterable[str]) -> frozenset[str]:
    """`"127.0.0.1, localhost"` -> {"127.0.0.1", "localhost"} (lowercased, blanks dropped)."""
    items = value.split(",") if isinstance(value, str) else value
    return frozenset(item.strip().lower().strip("[]") for item in items if item.strip())


def _split(base_url: str) -> tuple[SplitResult, str, int]:
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"not a URL: {exc}", code="invalid_endpoint_url") from None
    if parts.scheme.lower() not in SCHEMES:
        raise EndpointRefused(
            f"scheme {parts.scheme!r} is not allowed: only http and https",
            code="endpoint_scheme",
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise EndpointRefused("the URL has no host", code="invalid_endpoint_url")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise EndpointRefused(
            "the URL may not carry user info, a query or a fragment (give the credential "
            "as `credential`)",
            code="invalid_endpoint_url",
        )
    default = 443 if parts.scheme.lower() == "https" else 80
    return parts, host, port or default


def refusal(address: str) -> str | None:
    """Why the exchange may not connect to `address`, or None if it may (a global address).
    An IPv6 address embedding an IPv4 one that a relay or gateway may route to (6to4,
    Teredo) is refused if the IPv4 one is: 2002:a9fe:a9fe::1 is global for `ipaddress`,
    but a 6to4 relay takes it to 169.254.169.254."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            for kind, inner in _embedded(ip):
                why = refusal(str(inner))
                if why is not None:
                    return f"a {kind} address of {why}"
    if str(ip) in METADATA_ADDRESSES:
        return "the cloud metadata address"
    for name in _REFUSED_KINDS:
        if getattr(ip, f"is_{name}", False):  # is_site_local: IPv6 only (fec0::/10)
            return f"a {name.replace('_', '-')} address"
    if not ip.is_global:
        return "not a global address"
    return None


_REFUSED_KINDS = (
    "loopback", "private", "link_local", "site_local", "unspecified", "multicast", "reserved",
)  # fmt: skip


def _embedded(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses `ip` carries, by the kind of address that carries them."""
    out: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.sixtofour is not None:
        out.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        out += [("Teredo", server), ("Teredo", client)]
    return out


async def _addresses(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        # The resolver's own words stay in the log: they tell a name that exists inside
        # the exchange's network from one that does not.
        log.info("endpoint refused: host %r does not resolve: %s", host, exc)
        raise EndpointRefused(
            f"host {host!r} does not resolve", code="endpoint_unresolvable"
        ) from None
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    if not seen:
        raise EndpointRefused(f"host {host!r} has no address", code="endpoint_unresolvable")
    return list(seen)


def _refused(host: str, address: str, why: str) -> NoReturn:
    """Refuse `host` for `address`: the provider is told what kind of address it resolves
    to, never which (that would tell anyone who registers a name the addresses inside
    the exchange's network); the log has the address (and the host, no credential)."""
    log.warning("endpoint refused: host %r resolves to %s, %s", host, address, why)
    raise EndpointRefused(
        f"host {host!r} resolves to {why}: the exchange does not call such addresses (an "
        "operator may allow a host with TOKEX_ENDPOINT_ALLOW_HOSTS)",
        code="endpoint_address_refused",
    )


async def resolve(base_url: str, allow_hosts: frozenset[str]) -> Target:
    """Check `base_url` and pin it to a checked address (or raise `EndpointRefused`)."""
    parts, host, port = _split(base_url)
    addresses = await _addresses(host, port)
    if host not in allow_hosts:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                _refused(host, address, why)
    return Target(
        scheme=parts.scheme.lower(), host=host, port=port, address=addresses[0],
        path=parts.path.rstrip("/"),
    )  # fmt: skip
