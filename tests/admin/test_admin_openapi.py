"""The admin API's OpenAPI document: valid, served, and in step with the routes."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from aiohttp import hdrs
from openapi_spec_validator import validate

from admin.app import create_app
from core.settings import Settings

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        resources.files("admin").joinpath("openapi.json").read_text(encoding="utf-8")
    )
    return loaded


def test_the_document_is_valid_openapi_3_1() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1.")
    validate(document)
    assert document["security"] == [{"bearer": []}]


def test_the_document_describes_exactly_the_registered_routes() -> None:
    app = create_app(Settings())
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != hdrs.METH_HEAD and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in _document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == registered
