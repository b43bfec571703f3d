"""The web page: ``GET /`` serves ``gateway/web/index.html``, ``GET /static/{path}`` the files beside it.

The files are shipped in the package (package data ``web/**/*``); nothing is built at run time. The page itself
needs no key: it is static, and every read it makes goes through the read API with the key the user entered
(kept in the browser's localStorage, sent as ``Authorization: Bearer``). Files are revalidated on every load
(``no-cache`` with ETag/Last-Modified), so an upgraded gateway never serves a stale script.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .errors import Refused

WEB_DIR = Path(__file__).resolve().parent / "web"
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


def _file(rel: str) -> web.FileResponse:
    root = WEB_DIR.resolve()
    try:  # a NUL byte (ValueError) or a name too long for the file system (OSError) is no file either
        path = (root / rel).resolve()
        found = path.is_relative_to(root) and path.is_file()
    except (ValueError, OSError):
        found = False
    if not found:
        raise Refused(404, "not_found", f"no file {rel!r} in the web page")
    headers = dict(_HEADERS)
    if path.suffix in _TYPES:
        headers["Content-Type"] = _TYPES[path.suffix] + ("; charset=utf-8" if path.suffix != ".svg" else "")
    return web.FileResponse(path, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return _file("index.html")


async def static(request: web.Request) -> web.FileResponse:
    return _file(request.match_info["path"])
