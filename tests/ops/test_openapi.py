"""The OpenAPI document (ops.openapi) and its docs page, in process on a real database.

What the routes really answer is checked over a running server in
test_openapi_conformance.py and test_schemathesis.py; here: the document's shape (one
error schema, security on every signed route, a table entry for every route) and a docs
page that needs no network.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from html.parser import HTMLParser
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from ops.app import create_app
from ops.config import Settings
from ops.openapi import ASSETS_DIR, ASSETS_PATH
from ops.openapi_errors import OPENAI_ERRORS, ROUTE_ERRORS
from tests.support.api_world import module_db_fixture  # noqa: F401 (a fixture)
from tests.support.server import REPO_ROOT
from tests.support.wire_time import schema_names, untimed

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
async def client(module_db: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(create_app(Settings(database_url=module_db))) as client:
        yield client


@pytest.fixture(scope="module")
async def doc(client: AsyncTestClient) -> dict[str, Any]:  # type: ignore[type-arg]
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


async def test_litestars_error_shape_is_gone_and_every_error_is_code_and_message(
    doc: dict[str, Any],
) -> None:
    for node in walk(doc):
        if isinstance(node, dict) and "properties" in node:
            assert not {"status_code", "detail", "extra"} & set(node["properties"]), node
    assert doc["components"]["schemas"]["Error"]["required"] == ["code", "message"]
    for key, op in operations(doc).items():
        errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
        assert errors, key
        openai = key.split()[1].startswith("/openai/v1")
        ref = "#/components/schemas/" + ("OpenAIError" if openai else "Error")
        for status, response in errors.items():
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": ref}, (key, status)
            for name, example in content["examples"].items():
                value = example["value"]
                code = value["error"]["code"] if openai else value["code"]
                assert code == name and f"`{code}`" in response["description"]
            if status in ("429", "503"):
                assert "Retry-After" in response["headers"], (key, status)


async def test_every_route_has_an_entry_in_the_error_table(doc: dict[str, Any]) -> None:
    documented = set(operations(doc))
    assert documented == set(ROUTE_ERRORS) | set(OPENAI_ERRORS)


async def test_signed_routes_name_the_three_headers_and_public_ones_none(
    doc: dict[str, Any],
) -> None:
    schemes = doc["components"]["securitySchemes"]
    headers = {schemes[n]["name"] for n in ("TokexKey", "TokexTimestamp", "TokexSignature")}
    assert headers == {"X-Tokex-Key", "X-Tokex-Timestamp", "X-Tokex-Signature"}
    assert all(schemes[n]["type"] == "apiKey" for n in ("TokexKey", "TokexSignature"))
    ops = operations(doc)
    signed = [{"TokexKey": [], "TokexTimestamp": [], "TokexSignature": []}]
    assert ops["POST /v1/orders"]["security"] == signed
    assert ops["GET /v1/balances"]["security"] == signed
    for public in ("GET /v1/book", "GET /health", "GET /v1/ledger/checkpoint"):
        assert ops[public]["security"] == []
        assert "401" not in ops[public]["responses"]
    assert ops["POST /openai/v1/chat/completions"]["security"] == [{"InferenceKey": []}]
    for key, op in ops.items():
        if op["security"] == signed:
            assert {"401", "429"} <= set(op["responses"]), key
    # role-guarded routes, by a guard or by the order routes' own check
    for key in ("POST /v1/instruments", "POST /v1/orders", "DELETE /v1/orders/{order_id}"):
        assert "403" in ops[key]["responses"], key


async def test_request_bodies_have_examples(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    example = schemas["PlaceOrder"]["examples"][0]
    assert set(example) <= set(schemas["PlaceOrder"]["properties"])
    assert isinstance(example["quantity"], int)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
async def test_docs_page_loads_only_assets_the_server_serves(
    client: AsyncTestClient,  # type: ignore[type-arg]
    page: str,
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "TokexSignature" in response.text  # the finished document is embedded
    parser = _Links()
    parser.feed(response.text)
    assert len(parser.urls) >= 4  # script, preset, styles, icon
    for url in parser.urls:
        assert url.startswith(ASSETS_PATH + "/"), url  # no CDN, nothing off this server
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content == (ASSETS_DIR / url.rsplit("/", 1)[1]).read_bytes()
    assert "//" not in " ".join(parser.urls)


async def test_an_unknown_asset_is_a_404_in_the_error_shape(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    response = await client.get(f"{ASSETS_PATH}/nope.js")
    assert response.status_code == 404
    assert set(response.json()) == {"code", "message"}


def test_the_assets_and_their_licence_are_package_data() -> None:
    """A wheel install carries them: pyproject's package-data matches every file."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ops"]
    files = [p.relative_to(REPO_ROOT / "ops").as_posix() for p in ASSETS_DIR.iterdir()]
    assert {"openapi_ui/LICENSE", "openapi_ui/swagger-ui-bundle.js"} <= set(files)
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name


async def test_every_operation_is_summarised_in_words(doc: dict[str, Any]) -> None:
    for key, op in operations(doc).items():
        assert " " in op["summary"], (key, op["summary"])  # not "PlaceOrder"
    place = operations(doc)["POST /v1/orders"]
    assert place["summary"] == "Place an order"
    assert "client_order_id" in place["description"]  # the handler's docstring


async def test_every_time_on_the_http_wire_names_its_unit(doc: dict[str, Any]) -> None:
    """Bodies, answers and query parameters: a time is `_ms`, a window's seconds `_s`
    (`schemas.wire_time`); only the deprecated old names may lack it."""
    names = list(schema_names(doc["components"]["schemas"]))
    for key, op in operations(doc).items():
        if " /openai/" in key:  # OpenAI's own shapes (its `created` is theirs)
            continue
        for param in op.get("parameters", []):
            if param["in"] in ("query", "path") and not param.get("deprecated"):
                names.append((key, param["name"]))
    assert len(names) > 300  # the walk saw the document
    assert untimed(names) == []
    deprecated = [p["name"] for op in operations(doc).values() for p in op.get("parameters", [])
                  if p.get("deprecated")]  # fmt: skip
    assert sorted(set(deprecated)) == ["from_time", "to_time"]
    assert doc["components"]["schemas"]["PlaceOrder"]["properties"]["expire_at"]["deprecated"]


async def test_the_metered_calls_document_their_event_stream(doc: dict[str, Any]) -> None:
    """With `"stream": true` a metered call answers 200 `text/event-stream`: documented
    beside the JSON answer."""
    for key in ("POST /openai/v1/chat/completions", "POST /openai/v1/completions"):
        content = operations(doc)[key]["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(content), (key, content)
        assert content["text/event-stream"]["schema"]["type"] == "string"


async def test_integer_bounds_are_the_exact_integers_the_code_checks(doc: dict[str, Any]) -> None:
    """Found in review: Litestar wrote every bound as a float (`le=2**63 - 1` became
    9.223372036854776e+18, 2**63, one above what the server takes) and dropped a bound of
    0 on an optional value (`to_index` had no minimum)."""
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    bounds = [node[key] for node in walk(doc) if isinstance(node, dict)
              for key in keys if key in node and not isinstance(node[key], dict)]  # fmt: skip
    assert len(bounds) > 50
    assert [b for b in bounds if type(b) is not int] == []

    def params(key: str) -> dict[str, Any]:
        return {p["name"]: p["schema"] for p in operations(doc)[key]["parameters"]}

    from_size = params("GET /v1/ledger/checkpoints")["from_size"]
    assert (from_size["minimum"], from_size["maximum"]) == (0, 2**63 - 1)
    to_index = params("GET /v1/audit/export")["to_index"]
    assert (to_index["minimum"], to_index["maximum"]) == (0, 2**62)
    place = doc["components"]["schemas"]["PlaceOrder"]["properties"]
    assert (place["quantity"]["exclusiveMinimum"], place["quantity"]["maximum"]) == (0, 2**62)
    assert (place["price"]["exclusiveMinimum"], place["price"]["maximum"]) == (0, 2**62)
    proof = doc["components"]["schemas"]["InclusionProof"]["properties"]
    assert proof["tree_size"]["maximum"] == 2**63 - 1
