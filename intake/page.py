"""The registrant's page, served by the edge from memory.

    GET /app/           the page (registration, status, code, photo, test, joining)
    GET /app/{asset}    its script and stylesheet, under content-hashed names

The built files (``intake/static/built/``, written by :mod:`intake.pagebuild`) are read once,
when the application is created, and gzipped then: a request costs a dictionary look-up and
no disk. Hashed assets are cached for a year (``immutable``: a new version is a new name); the
HTML is cached for a minute and revalidated by its ETag, so a new version reaches everyone
within a minute while a CDN can still serve the crowd. Every answer carries a strict
Content-Security-Policy: scripts and styles from this origin only, no inline script, no
third party, no framing, and no referrer (the email page's address holds the link's token).

These routes are aiohttp's; the registration route is untouched (no middleware, and the
express path still takes ``POST /v1/registrations`` before aiohttp sees it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from intake.pagebuild import DIST, MANIFEST, PAGE_PATH
from intake.problems import problem

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HTML_CACHE = "public, max-age=60"
ASSET_CACHE = "public, max-age=31536000, immutable"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Vary": "Accept-Encoding",
}

PAGES = web.AppKey("page_files", dict)


@dataclass(frozen=True, slots=True)
class File:
    """One file of the page, as served: its bytes, gzipped and not, and its headers."""

    raw: bytes
    gzipped: bytes
    etag: str
    content_type: str
    cache_control: str


def load(dist: Path = DIST) -> dict[str, File]:
    """The built page's files by name (an HTML page by its own name, an asset by its hashed
    one)."""
    manifest: dict[str, str] = json.loads((dist / MANIFEST).read_text())
    files = {}
    for logical, name in manifest.items():
        raw = (dist / name).read_bytes()
        hashed = name != logical
        files[name] = File(
            raw=raw,
            gzipped=gzip.compress(raw, compresslevel=9, mtime=0),
            etag='"' + hashlib.sha256(raw).hexdigest()[:20] + '"',
            content_type=_TYPES[Path(name).suffix],
            cache_control=ASSET_CACHE if hashed else HTML_CACHE,
        )
    return files


def add_routes(app: web.Application) -> None:
    """Add the page's routes and load its files."""
    app[PAGES] = load()
    app.router.add_get(PAGE_PATH, index)
    app.router.add_get(PAGE_PATH + "{asset}", asset)


def serve(request: web.Request, name: str) -> web.Response:
    """Answer with the page file ``name`` (gzipped if the client takes it; 304 if its ETag
    matches)."""
    file: File = request.app[PAGES][name]
    headers = {**_SECURITY_HEADERS, "ETag": file.etag, "Cache-Control": file.cache_control}
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = file.raw
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body, headers["Content-Encoding"] = file.gzipped, "gzip"
    headers["Content-Type"] = file.content_type
    return web.Response(body=body, headers=headers)


async def index(request: web.Request) -> web.StreamResponse:
    """``GET /app/``: the page."""
    return serve(request, "index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    """``GET /app/{asset}``: a hashed asset; the HTML pages only under their own routes."""
    name = request.match_info["asset"]
    file = request.app[PAGES].get(name)
    if file is None or file.cache_control != ASSET_CACHE:
        return problem(404, "not-found", "No such file")
    return serve(request, name)
