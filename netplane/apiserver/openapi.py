"""A minimal OpenAPI v3 description: per group-version, the resource paths and, for each write,
the `fieldValidation` parameter. kubectl's default `--validate=strict` reads exactly this to learn
that the server accepts server-side field validation; without it kubectl refuses to `apply`.

No schemas are published, so kubectl computes strategic merge patches from its compiled-in types
(its documented fallback), which is what it would do for these built-in kinds anyway.
"""

from __future__ import annotations

from typing import Any

from netplane.apiserver.resources import ResourceType, by_group_version

_PARAM = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def index() -> dict[str, Any]:
    return {
        "paths": {
            _gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}"}
            for (g, v) in by_group_version()
        }
    }


def _operations(rt: ResourceType, collection: bool) -> dict[str, Any]:
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    verbs = ("get", "post", "delete") if collection else ("get", "put", "patch", "delete")
    return {
        verb: {"x-kubernetes-group-version-kind": gvk, "parameters": [_PARAM] if verb in ("post", "put", "patch") else []}
        for verb in verbs
    }


def group_version(group: str, version: str) -> dict[str, Any] | None:
    rts = by_group_version().get((group, version))
    if rts is None:
        return None
    base = "/" + _gv_path(group, version)
    paths: dict[str, Any] = {}
    for rt in rts:
        prefix = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
        paths[prefix] = _operations(rt, collection=True)
        paths[prefix + "/{name}"] = _operations(rt, collection=False)
    return {
        "openapi": "3.0.0",
        "info": {"title": "netplane embedded apiserver", "version": version},
        "paths": paths,
        "components": {"schemas": {}},
    }
