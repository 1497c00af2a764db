"""Validate real responses against the edge's own OpenAPI document, so that the document stays
true to the code."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema


def schema(name: str) -> dict[str, Any]:
    """Component schema ``name`` as a standalone JSON Schema (2020-12, as OpenAPI 3.1 uses)."""
    text = resources.files("intake").joinpath("openapi.json").read_text()
    document = json.loads(text.replace("#/components/schemas/", "#/$defs/"))
    return {"$defs": document["components"]["schemas"], **document["components"]["schemas"][name]}


def validate(name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches schema ``name``."""
    jsonschema.Draft202012Validator(schema(name)).validate(instance)
