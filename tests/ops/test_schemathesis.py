"""schemathesis against /schema/openapi.json: no server errors, nothing off the document.

For every route, schemathesis generates requests from the document (valid ones and, in
negative mode, ones that break it) and each is sent signed as the buyer, the provider
and the operator (`Signer`, a requests auth: it signs the exact path with query and body
bytes that are sent; the buyer also sends its inference key for /openai/v1), to a server
on a small real market (tests/support/api_world.py). Checks: no 5xx, every status,
content type, header and body as documented. Bounded: `MAX_EXAMPLES` per route and mode
(`TOKEX_SCHEMATHESIS_EXAMPLES` overrides it).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from market.signing import now_ms, sign_request
from ops.openapi_errors import OPENAI_ERRORS, ROUTE_ERRORS
from tests.support.api_world import (  # noqa: F401 (the module's fixtures)
    World,
    module_db_fixture,
    module_server_fixture,
    upstream_fixture,
    world_fixture,
)

MAX_EXAMPLES = int(os.environ.get("TOKEX_SCHEMATHESIS_EXAMPLES", "8"))
ROLES = ("buyer", "provider", "operator")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Signer(requests.auth.AuthBase):
    """Sign a prepared request as `TokexClient` does: the path with query as sent, the
    body bytes as sent, a timestamp strictly after the previous one."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self.private_key = private_key
        self.last_ms = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else bytes(body)
        self.last_ms = max(now_ms(), self.last_ms + 1)
        assert request.method is not None and request.path_url
        request.headers.update(
            sign_request(
                self.private_key, self.key_id, request.method, request.path_url, raw,
                self.last_ms,
            )
        )  # fmt: skip
        return request


@pytest.fixture(scope="module")
def sessions(world: World) -> dict[str, requests.Session]:
    out = {}
    for role in ROLES:
        client = world[role].client
        assert client.key_id is not None and client.private_key is not None
        session = requests.Session()
        session.auth = Signer(client.key_id, client.private_key)
        if role == "buyer":  # /openai/v1 takes the buyer's inference key; /v1 ignores it
            session.headers["Authorization"] = f"Bearer {world.ids['inference_secret']}"
        out[role] = session
    return out


@pytest.fixture(scope="module")
def schema(world: World) -> Any:
    return schemathesis.openapi.from_url(f"{world.base_url}/schema/openapi.json")


@pytest.mark.parametrize("key", sorted({*ROUTE_ERRORS, *OPENAI_ERRORS}))
def test_schemathesis_finds_no_server_error_and_nothing_undocumented(
    key: str, schema: Any, sessions: dict[str, requests.Session], world: World
) -> None:
    method, path = key.split(" ", 1)
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | (
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    )

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        for role in ROLES:
            response = case.call(base_url=world.base_url, session=sessions[role], timeout=30)
            case.validate_response(response, checks=CHECKS)

    run()
