"""The dashboard's routes in process: the page, its modules, and what a wheel ships."""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from ops.app import create_app
from ops.config import Settings
from ops.dashboard.routes import ASSETS_PATH, STATIC_DIR, dashboard_routes
from tests.support.server import REPO_ROOT

_SPECIFIER = re.compile(r'^import\s[^;]*?\sfrom "([^"]+)";', re.MULTILINE)


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(Settings(database_url=db_url), route_handlers=dashboard_routes)
    async with AsyncTestClient(app) as client:
        yield client


async def test_page_is_public_html_with_a_same_origin_policy(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    response = await client.get("/")  # unsigned
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"  # one charset
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert f'<script type="module" src="{ASSETS_PATH}/app.js">' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # no CDN


async def test_every_module_the_page_imports_is_served_as_javascript(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        response = await client.get(f"{ASSETS_PATH}/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        specifiers = _SPECIFIER.findall(response.text)
        assert all(re.fullmatch(r"\./[a-z_]+\.js", s) for s in specifiers), (name, specifiers)
        todo.extend(s[2:] for s in specifiers)
    assert {"api.js", "account.js", "ledger.js", "market.js", "verify.js"} <= seen
    css = await client.get(f"{ASSETS_PATH}/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_only_the_static_dir_is_served(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    for path in (
        "/dashboard/../routes.py",
        "/dashboard/%2e%2e/routes.py",
        "/dashboard/nope.js",
        "/dashboard/app.js/x",  # a file taken for a directory: was a 500 (NotADirectoryError)
    ):
        assert (await client.get(path)).status_code == 404, path


def test_the_wheel_ships_every_asset() -> None:
    """Each file of static/ matches the package data of pyproject.toml (an installed
    wheel serves only those), and the page refers to no file that is not there."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["ops.dashboard"]
    package_dir = STATIC_DIR.parent
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert files
    for path in files:
        relative = path.relative_to(package_dir).as_posix()
        assert any(fnmatch(relative, g) and "/" not in relative[len("static/") :] for g in globs), (
            f"{relative} is not package data of ops.dashboard"
        )
    for name in re.findall(r'"/dashboard/([^"]+)"', (STATIC_DIR / "index.html").read_text()):
        assert Path(STATIC_DIR, name).is_file(), name
