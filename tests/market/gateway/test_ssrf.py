"""Where an endpoint may point: the SSRF check, on real name resolution (no network)."""

from __future__ import annotations

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
    assert refusal("169.254.169.254") == "the cloud metadata address"
    assert refusal("10.0.0.1") == "a private address"
