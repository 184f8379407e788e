"""Validate JSON payloads against OpenAI's published OpenAPI spec.

Used by contract tests and by the upstream mock's own tests, so "OpenAI-shaped" means what the
spec says rather than what we remember. The spec is `shared/openai/openapi.yaml` beside the repo
root (override with ``CMG_OPENAPI_SPEC``). It is OpenAPI 3.1, whose schemas are JSON Schema
2020-12 except for some legacy ``nullable: true`` markers; those are rewritten to
``anyOf: [<schema>, {"type": "null"}]`` once at load, then every ``#/components/schemas/...``
reference resolves against the whole document through a ``referencing.Registry``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

_SPEC_URI = "urn:cmg:openai-openapi"
_YamlLoader: Any = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # libyaml cuts a 1.5 MB load to ~1s


def spec_path() -> Path:
    """Where the OpenAPI document lives: ``CMG_OPENAPI_SPEC`` or ``<repo>/../shared/openai``."""
    override = os.environ.get("CMG_OPENAPI_SPEC")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "openai" / "openapi.yaml"


def validate(schema_name: str, instance: Any) -> None:
    """Raise ``ValidationError`` unless ``instance`` fits ``#/components/schemas/<name>``."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        raise error


@functools.cache
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    spec, registry = _load()
    if schema_name not in spec["components"]["schemas"]:
        raise KeyError(f"{schema_name!r} is not in components/schemas of {spec_path()}")
    root = {"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(root, registry=registry)


@functools.cache
def _load() -> tuple[dict[str, Any], Registry[Any]]:
    with spec_path().open("rb") as handle:
        spec = _rewrite_nullable(yaml.load(handle, Loader=_YamlLoader))
    return spec, Registry().with_resource(_SPEC_URI, DRAFT202012.create_resource(spec))


def _rewrite_nullable(node: Any) -> Any:
    """Turn OpenAPI 3.0 ``nullable: true`` into the 2020-12 spelling, which jsonschema enforces."""
    if isinstance(node, list):
        return [_rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _rewrite_nullable(value) for key, value in node.items()}
    nullable = schema.get("nullable")
    if not isinstance(nullable, bool):  # a property that happens to be called "nullable"
        return schema
    del schema["nullable"]
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema
