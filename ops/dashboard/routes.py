"""The web dashboard's routes: the page at `/` and its assets under `/dashboard/`.

Everything the browser runs is package data in `static/` (ES modules and CSS, no build
step, nothing from a CDN). The page only calls the exchange's own API and websocket:
market data is public; the account page signs its requests in the browser with WebCrypto
Ed25519 (the private key is imported non-extractable and never sent); the ledger page
verifies the checkpoint's signature and an inclusion proof in the browser.

A strict Content-Security-Policy keeps the page to its own origin: scripts and styles
from `/dashboard/` only, no inline script, fetches and the websocket to the same host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.file_system import BaseLocalFileSystem
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler, PathType
from litestar.types.file_types import FileInfo

from market.auth import PUBLIC

__all__ = ["ASSETS_PATH", "STATIC_DIR", "dashboard_routes"]

STATIC_DIR: Final = Path(__file__).resolve().with_name("static")
ASSETS_PATH: Final = "/dashboard"

#: Same origin only. `connect-src 'self'` covers the same host's ws:/wss: (CSP level 3).
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # frame-ancestors' counterpart for browsers without CSP level 2: never framed
    "X-Frame-Options": "DENY",
}


@get("/", opt=PUBLIC, include_in_schema=False, name="dashboard")
async def dashboard_page() -> Response[bytes]:
    """The dashboard's one HTML page; the views are routed in the browser (`#/...`)."""
    return Response(
        (STATIC_DIR / "index.html").read_bytes(),
        media_type="text/html",  # Litestar adds "; charset=utf-8"
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


class _AssetFiles(BaseLocalFileSystem):
    """The local file system, but a path through a file (`app.js/x`) is not found (404),
    as Litestar answers a missing file, instead of its `NotADirectoryError` (a 500)."""

    async def info(self, path: PathType, **kwargs: Any) -> FileInfo:
        try:
            return await super().info(path, **kwargs)
        except NotADirectoryError as e:
            raise FileNotFoundError(str(path)) from e


dashboard_assets = create_static_files_router(
    path=ASSETS_PATH,
    directories=[STATIC_DIR],
    file_system=_AssetFiles(),
    name="dashboard_assets",
    opt=PUBLIC,
    include_in_schema=False,
    # revalidated on each load (ETag / Last-Modified): an upgraded server's assets show at once
    cache_control=CacheControlHeader(no_cache=True),
    after_request=None,
)

#: Registered by `ops.app.default_route_handlers`.
dashboard_routes: Final[list[ControllerRouterHandler]] = [dashboard_page, dashboard_assets]
