"""Where an endpoint may point: the SSRF check, on real name resolution (no network)."""

from __future__ import annotations

import logging

import pytest

from market.gateway.ssrf import EndpointRefused, parse_allow_hosts, refusal, resolve

NONE: frozenset[str] = frozenset()
TESTS = parse_allow_hosts("127.0.0.1, localhost")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "endpoint_address_refused"),
        ("http://10.0.0.1:8000/v1", "endpoint_address_refused"),
        ("http://192.168.1.10/v1", "endpoint_address_refused"),
        ("http://127.0.0.1:8000/v1", "endpoint_address_refused"),
        ("http://localhost:8000/v1", "endpoint_address_refused"),  # a name for loopback
        ("http://[::1]:8000/v1", "endpoint_address_refused"),
        ("http://[::ffff:10.0.0.1]/v1", "endpoint_address_refused"),  # IPv4-mapped private
        ("http://0.0.0.0:8000/v1", "endpoint_address_refused"),
        ("http://100.64.0.1/v1", "endpoint_address_refused"),  # shared (CGNAT) space
        ("http://[2002:a9fe:a9fe::1]/v1", "endpoint_address_refused"),  # 6to4 of the metadata
        ("http://[2002:a00:1::1]/v1", "endpoint_address_refused"),  # 6to4 of 10.0.0.1
        ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/v1", "endpoint_address_refused"),
        ("http://[fec0::1]/v1", "endpoint_address_refused"),  # IPv6 site-local
        ("file:///etc/passwd", "endpoint_scheme"),
        ("gopher://example.com/", "endpoint_scheme"),
        ("ftp://example.com/", "endpoint_scheme"),
        ("http:///v1", "invalid_endpoint_url"),
        ("http://user:pw@example.com/v1", "invalid_endpoint_url"),
        ("http://example.com:99999/v1", "invalid_endpoint_url"),
        ("http://no-such-host.invalid/v1", "endpoint_unresolvable"),
    ],
)
async def test_refused(url: str, code: str) -> None:
    with pytest.raises(EndpointRefused) as info:
        await resolve(url, NONE)
    assert info.value.code == code
    assert info.value.kind == "invalid"  # a 400


async def test_the_metadata_address_is_named() -> None:
    with pytest.raises(EndpointRefused, match="metadata"):
        await resolve("http://169.254.169.254/", NONE)


async def test_allowed_hosts_pass_and_are_pinned_to_the_checked_address() -> None:
    target = await resolve("http://localhost:8123/v1/", TESTS)
    assert target.address in ("127.0.0.1", "::1")
    assert target.url in ("http://127.0.0.1:8123/v1", "http://[::1]:8123/v1")
    assert target.headers == {"Host": "localhost:8123"}  # the name travels in Host only
    pinned = await resolve("http://127.0.0.1:8123", TESTS)
    assert (pinned.url, pinned.extensions) == ("http://127.0.0.1:8123", {})


async def test_allow_list_is_by_host_not_by_address() -> None:
    # 127.0.0.1 allowed does not allow other loopback names or addresses
    with pytest.raises(EndpointRefused):
        await resolve("http://127.0.0.2/v1", parse_allow_hosts("127.0.0.1"))
    with pytest.raises(EndpointRefused):
        await resolve("http://localhost/v1", parse_allow_hosts("127.0.0.1"))


async def test_a_scheme_is_refused_even_for_an_allowed_host() -> None:
    with pytest.raises(EndpointRefused) as info:
        await resolve("file://localhost/etc/passwd", TESTS)
    assert info.value.code == "endpoint_scheme"


async def test_https_keeps_the_name_for_tls() -> None:
    target = await resolve("https://localhost/v1", TESTS)
    assert target.port == 443 and target.extensions == {"sni_hostname": "localhost"}
    assert target.headers == {"Host": "localhost"}


def test_global_addresses_pass() -> None:
    assert refusal("8.8.8.8") is None
    assert refusal("2606:4700:4700::1111") is None
    assert refusal("2002:808:808::1") is None  # 6to4 of a global address
    assert refusal("169.254.169.254") == "the cloud metadata address"
    assert refusal("10.0.0.1") == "a private address"


def test_ipv6_forms_of_refused_ipv4_addresses_are_refused() -> None:
    """`ipaddress` counts 6to4 addresses global whatever they embed; a 6to4 relay takes
    them to the embedded IPv4 address, as Teredo does to its client's."""
    assert refusal("2002:a9fe:a9fe::1") == "a 6to4 address of the cloud metadata address"
    assert refusal("2002:a00:1::1") == "a 6to4 address of a private address"
    assert refusal("2002:7f00:1::1") == "a 6to4 address of a loopback address"
    # Teredo: server 65.54.227.120, client 10.0.0.1 (stored inverted in the last 32 bits)
    assert refusal("2001:0:4136:e378:8000:63bf:f5ff:fffe") is not None
    assert refusal("fec0::1") == "a site-local address"


async def test_a_refusal_names_the_kind_of_address_not_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider may not learn what the exchange's resolver says about a name (which
    internal names exist, their addresses); the operator's log has it."""
    with caplog.at_level(logging.INFO, logger="market.gateway.ssrf"):
        with pytest.raises(EndpointRefused) as refused:
            await resolve("http://localhost:8000/v1", NONE)
        with pytest.raises(EndpointRefused) as unknown:
            await resolve("http://no-such-host.invalid/v1", NONE)
    assert refused.value.message.startswith("host 'localhost' resolves to a loopback address")
    assert "127.0.0.1" not in refused.value.message and "::1" not in refused.value.message
    assert unknown.value.message == "host 'no-such-host.invalid' does not resolve"
    logged = caplog.text
    assert "localhost" in logged and ("127.0.0.1" in logged or "::1" in logged)
    assert "no-such-host.invalid" in logged
