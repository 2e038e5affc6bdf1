"""Every SDK model against ``docs/openapi.json``: same field names, the
same required fields, compatible types; and every component the SDK reads
or sends has a model. No daemon needed."""

from __future__ import annotations

import enum
import inspect
import types
import typing
from typing import Any, Literal, Union

import pytest
from pydantic import BaseModel

import hull
from hull import models

# Components the SDK does not model, with the reason.
UNMODELLED = {
    "ErrorBody": "read by hull.errors as {'error': ApiError}",
    "ExecClientMessage": "WebSocket exec input; the SDK streams over NDJSON",
    "ResetResult": "system reset is deliberately not in the SDK",
    "BrowserAction": "built per action by hull._ops.browser_action (each Browser method sends one variant)",
    "BrowserActionResult": "read per action by hull._ops (each Browser method returns its variant's field)",
}


def all_models() -> list[type[BaseModel]]:
    out = []
    for _, obj in inspect.getmembers(models, inspect.isclass):
        if issubclass(obj, BaseModel) and obj.__module__ == models.__name__ and "__openapi__" in obj.__dict__:
            out.append(obj)
    return out


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def component(doc: dict, name: str) -> tuple[dict, set[str]]:
    """(properties, required) of a component, ``Name#variant`` picking the
    ``oneOf`` variant whose tag has that value; a ``oneOf`` without a
    variant is the union of its variants' properties, none required but
    the tag."""
    base, _, variant = name.partition("#")
    s = doc["components"]["schemas"][base]
    if "oneOf" not in s:
        return s["properties"], set(s.get("required", []))
    variants = []
    for v in s["oneOf"]:
        props: dict = {}
        req: set[str] = set()
        for part in v.get("allOf", [v]):
            part = resolve(doc, part)
            props.update(part.get("properties", {}))
            req |= set(part.get("required", []))
        variants.append((props, req))
    if variant:
        for props, req in variants:
            tag = next(k for k in ("type", "event") if k in props)
            if variant in props[tag].get("enum", []):
                return props, req
        raise AssertionError(f"{name}: no such variant")
    props = {}
    for p, _ in variants:
        props.update(p)
    tag = next(k for k in ("type", "event") if k in props)
    return props, {tag}


def json_types(doc: dict, schema: dict) -> set[str]:
    """The JSON types a property schema allows (``null`` included)."""
    if "$ref" in schema:
        target = resolve(doc, schema)
        if "enum" in target:
            return {"enum:" + schema["$ref"].rsplit("/", 1)[1]}
        return {"ref:" + schema["$ref"].rsplit("/", 1)[1]}
    if "oneOf" in schema:
        out: set[str] = set()
        for s in schema["oneOf"]:
            out |= json_types(doc, s)
        return out
    t = schema.get("type")
    if t is None:
        return {"any"}
    return set(t) if isinstance(t, list) else {t}


def py_types(ann: Any) -> set[str]:
    """The JSON types a model field's annotation accepts."""
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType):
        out: set[str] = set()
        for a in typing.get_args(ann):
            out |= py_types(a)
        return out
    if ann is type(None):
        return {"null"}
    if origin is Literal:
        return {"string"}
    if ann is str:
        return {"string"}
    if ann is bool:
        return {"boolean"}
    if ann is int:
        return {"integer"}
    if ann is float:
        return {"number"}
    if origin is list:
        return {"array"}
    if origin is dict or ann is dict:
        return {"object"}
    if inspect.isclass(ann) and issubclass(ann, enum.Enum):
        return {"enum:" + ann.__name__}
    if inspect.isclass(ann) and issubclass(ann, BaseModel):
        return {"ref:" + ann.__openapi__.partition("#")[0]}
    raise AssertionError(f"unexpected annotation {ann!r}")


# The routes the SDK calls: each must exist in the API, and every component
# their bodies reach must have an SDK model (or be in UNMODELLED). Routes
# the SDK does not call (WebSocket exec, CDP discovery, the MCP endpoint
# itself, which MCP clients speak to) do not fail this test.
SDK_ROUTES = [
    ("get", "/v1/health"),
    ("get", "/v1/version"),
    ("get", "/v1/info"),
    ("post", "/v1/sandboxes"),
    ("get", "/v1/sandboxes"),
    ("get", "/v1/sandboxes/{id}"),
    ("delete", "/v1/sandboxes/{id}"),
    ("post", "/v1/sandboxes/{id}/pause"),
    ("post", "/v1/sandboxes/{id}/resume"),
    ("post", "/v1/sandboxes/{id}/stop"),
    ("put", "/v1/sandboxes/{id}/ttl"),
    ("post", "/v1/sandboxes/{id}/exec"),
    ("post", "/v1/sandboxes/{id}/exec/stream"),
    ("get", "/v1/sandboxes/{id}/processes"),
    ("post", "/v1/sandboxes/{id}/processes/{pid}/signal"),
    ("get", "/v1/sandboxes/{id}/files"),
    ("put", "/v1/sandboxes/{id}/files"),
    ("delete", "/v1/sandboxes/{id}/files"),
    ("get", "/v1/sandboxes/{id}/files/stat"),
    ("get", "/v1/sandboxes/{id}/files/list"),
    ("get", "/v1/sandboxes/{id}/files/watch"),
    ("post", "/v1/sandboxes/{id}/files/mkdir"),
    ("post", "/v1/sandboxes/{id}/files/rename"),
    ("get", "/v1/sandboxes/{id}/files/archive"),
    ("put", "/v1/sandboxes/{id}/files/archive"),
    ("post", "/v1/sandboxes/{id}/shells"),
    ("get", "/v1/sandboxes/{id}/shells"),
    ("post", "/v1/sandboxes/{id}/shells/{session}/run"),
    ("post", "/v1/sandboxes/{id}/shells/{session}/send"),
    ("delete", "/v1/sandboxes/{id}/shells/{session}"),
    ("post", "/v1/sandboxes/{id}/code/contexts"),
    ("get", "/v1/sandboxes/{id}/code/contexts"),
    ("post", "/v1/sandboxes/{id}/code/contexts/{context}/interrupt"),
    ("post", "/v1/sandboxes/{id}/code/contexts/{context}/restart"),
    ("delete", "/v1/sandboxes/{id}/code/contexts/{context}"),
    ("post", "/v1/sandboxes/{id}/code/run"),
    ("post", "/v1/sandboxes/{id}/code/run/stream"),
    ("get", "/v1/sandboxes/{id}/browser"),
    ("post", "/v1/sandboxes/{id}/browser/start"),
    ("post", "/v1/sandboxes/{id}/browser/stop"),
    ("post", "/v1/sandboxes/{id}/browser/restart"),
    ("post", "/v1/sandboxes/{id}/browser/actions"),
    ("get", "/v1/sandboxes/{id}/browser/screenshot"),
    ("get", "/v1/sandboxes/{id}/browser/cdp"),
    ("post", "/v1/sandboxes/{id}/mcp-servers"),
    ("get", "/v1/sandboxes/{id}/mcp-servers"),
    ("delete", "/v1/sandboxes/{id}/mcp-servers/{name}"),
    ("post", "/v1/sandboxes/{id}/snapshot"),
    ("post", "/v1/sandboxes/{id}/rollback"),
    ("get", "/v1/snapshots"),
    ("get", "/v1/snapshots/{id}"),
    ("delete", "/v1/snapshots/{id}"),
    ("post", "/v1/snapshots/{id}/fork"),
    ("get", "/v1/snapshots/{id}/export"),
    ("post", "/v1/snapshots/import"),
    ("get", "/v1/templates"),
    ("post", "/v1/templates"),
    ("post", "/v1/templates/import"),
    ("post", "/v1/templates/build"),
    ("delete", "/v1/templates/{name}"),
]


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            out.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)


def test_sdk_routes_exist_and_their_components_are_modelled(openapi: dict) -> None:
    missing_routes = [(m, p) for m, p in SDK_ROUTES if m not in openapi["paths"].get(p, {})]
    assert not missing_routes, f"routes the SDK calls that the API no longer has: {missing_routes}"
    reached: set[str] = set()
    for method, path in SDK_ROUTES:
        _refs(openapi["paths"][path][method], reached)
    schemas = openapi["components"]["schemas"]
    todo = list(reached)
    while todo:
        name = todo.pop()
        inner: set[str] = set()
        _refs(schemas[name], inner)
        for n in inner - reached:
            reached.add(n)
            todo.append(n)
    modelled = {m.__openapi__.partition("#")[0] for m in all_models()}
    enums = {n for n in reached if "enum" in schemas[n]}
    missing = reached - modelled - enums - set(UNMODELLED)
    assert not missing, f"components the SDK's routes use without an SDK model: {sorted(missing)}"
    unknown = modelled - set(schemas)
    assert not unknown, f"SDK models of components the API does not have: {sorted(unknown)}"
    enum_classes = {c.__name__ for c in vars(models).values() if inspect.isclass(c) and issubclass(c, enum.Enum)}
    assert enums <= enum_classes, f"enums without an SDK enum: {sorted(enums - enum_classes)}"


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.__name__)
def test_model_matches_openapi(openapi: dict, model: type[BaseModel]) -> None:
    props, required = component(openapi, model.__openapi__)
    fields = {(f.alias or n): (n, f) for n, f in model.model_fields.items()}
    assert set(fields) == set(props), (
        f"{model.__name__} vs {model.__openapi__}: only in the SDK {sorted(set(fields) - set(props))}, "
        f"only in the API {sorted(set(props) - set(fields))}"
    )
    for name, (attr, f) in fields.items():
        if name in required:
            # A tag field may be defaulted to its one value.
            tag_default = typing.get_origin(f.annotation) is Literal
            assert f.is_required() or tag_default, f"{model.__name__}.{attr}: required by the API"
        else:
            assert not f.is_required(), f"{model.__name__}.{attr}: optional in the API, required in the SDK"
        api = json_types(openapi, props[name])
        sdk = py_types(f.annotation)
        if "any" in api:
            continue
        # An integer is also a valid number; an optional field may be absent (None).
        api_ok = api | ({"integer"} if "number" in api else set())
        extra = sdk - api_ok - ({"null"} if name not in required else set())
        assert not extra, f"{model.__name__}.{attr}: SDK accepts {sorted(sdk)}, API has {sorted(api)}"
        assert sdk & api, f"{model.__name__}.{attr}: SDK {sorted(sdk)} vs API {sorted(api)}"


@pytest.mark.parametrize(
    "enum_cls,component",
    [
        (models.SandboxState, "SandboxState"),
        (models.Profile, "Profile"),
        (models.SubstrateKind, "SubstrateKind"),
        (models.ErrorKind, "ErrorKind"),
        (models.ErrorReason, "ErrorReason"),
        (models.BrowserState, "BrowserState"),
    ],
)
def test_enums_match_openapi(openapi: dict, enum_cls: type[enum.Enum], component: str) -> None:
    assert {e.value for e in enum_cls} == set(openapi["components"]["schemas"][component]["enum"])


def test_error_classes_cover_every_kind(openapi: dict) -> None:
    kinds = set(openapi["components"]["schemas"]["ErrorKind"]["enum"])
    classes = {c.kind: c for c in hull.HullError.__subclasses__()}
    assert kinds == set(classes), sorted(kinds ^ set(classes))
    for kind, cls in classes.items():
        assert getattr(hull, cls.__name__) is cls, kind


def test_public_names_have_docstrings() -> None:
    for name in hull.__all__:
        obj = getattr(hull, name)
        if name == "__version__":
            continue
        assert (obj.__doc__ or "").strip(), f"hull.{name} has no docstring"
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member) and not isinstance(member, property):
                    continue
                fn = member.fget if isinstance(member, property) else member
                assert (getattr(fn, "__doc__", None) or "").strip(), f"hull.{name}.{attr} has no docstring"
