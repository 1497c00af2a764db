"""The OpenAPI document served at /openapi.json: valid, and in step with the code."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import hdrs, web
from openapi_spec_validator import validate

import intake.validation
from core.keys import Keyring
from core.settings import Settings
from intake.app import create_app
from intake.publisher import BatchPublisher

DOCUMENT_PATH = Path(intake.validation.__file__).with_name("openapi.json")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def app() -> web.Application:
    """The edge's application, built and never started (nothing connects anywhere)."""
    settings = Settings()
    keyring = Keyring.from_secret(settings.secret_key)
    return create_app(settings, keyring, BatchPublisher(settings, keyring))


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_document_describes_exactly_the_registered_routes(
    app: web.Application, document: dict[str, Any]
) -> None:
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != hdrs.METH_HEAD and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == registered


def _codes_in_validation_source() -> set[str]:
    """Every code literal of ``_Invalid("code", ...)`` and ``FieldError(field, "code", ...)``."""
    tree = ast.parse(Path(intake.validation.__file__).read_text(encoding="utf-8"))
    positions = {"_Invalid": 0, "FieldError": 1}
    codes: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        position = positions.get(node.func.id)
        if position is None or len(node.args) <= position:
            continue
        argument = node.args[position]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            codes.add(argument.value)
    return codes


def test_error_code_enum_matches_validation_source(document: dict[str, Any]) -> None:
    source_codes = _codes_in_validation_source()
    assert len(source_codes) > 10  # the parse found the literals, not nothing
    enum = document["components"]["schemas"]["FieldError"]["properties"]["code"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == source_codes
