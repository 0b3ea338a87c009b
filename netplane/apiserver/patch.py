"""PATCH bodies, applied the way kube-apiserver applies them. Pure: no I/O, stdlib only.

The request's Content-Type picks the patch type:

* ``application/json-patch+json``: RFC 6902 operations, applied atomically;
* ``application/merge-patch+json``: RFC 7386, objects merge and ``null`` deletes;
* ``application/strategic-merge-patch+json``: k8s.io/apimachinery ``strategicpatch``. Lists
  merge by key or are replaced according to the Go struct tags ``patchStrategy`` and
  ``patchMergeKey``, which this module carries as a table (see ``patch_meta``).

No function mutates its inputs. Results may share untouched subtrees with the original (never
with the patch), so a caller that keeps the original must not mutate the result in place.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
SUPPORTED_PATCH_TYPES: tuple[str, ...] = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

# kube-apiserver refuses JSON patches with more operations than this (maxJSONPatchOperations).
MAX_JSON_PATCH_OPERATIONS = 10000


class PatchError(Exception):
    """The patch cannot be applied. ``code`` is the HTTP status to answer with: 400 when the body
    is not a well-formed patch, 422 when a well-formed patch does not apply to the object."""

    def __init__(self, message: str, code: int = 422):
        super().__init__(message)
        self.code = code


class UnsupportedPatchType(PatchError):
    """The Content-Type is no patch type we apply (415); ``supported`` lists those we do."""

    def __init__(self, content_type: str):
        self.content_type = content_type
        self.supported = SUPPORTED_PATCH_TYPES
        super().__init__(f"the body of the request was in an unknown format ({content_type!r}) - "
                         f"accepted media types include: {', '.join(self.supported)}", code=415)


def apply_patch(original: dict, content_type: str, body: bytes | str | Any, kind: str) -> dict:
    """Apply a PATCH request body (raw JSON, or already decoded) as its Content-Type says.

    Media type parameters such as ``; charset=utf-8`` are ignored. ``kind`` selects the
    strategic merge patch metadata. Raises UnsupportedPatchType or PatchError.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in SUPPORTED_PATCH_TYPES:
        raise UnsupportedPatchType(media_type)
    patch = _decode(body) if isinstance(body, (bytes, bytearray, str)) else body
    if media_type == JSON_PATCH:
        return apply_json_patch(original, patch)
    if media_type == MERGE_PATCH:
        return apply_merge_patch(original, patch)
    return apply_strategic_merge_patch(original, patch, kind)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode(body: bytes | bytearray | str) -> Any:
    """Strict JSON: Python's json module would otherwise accept NaN and Infinity."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise PatchError(f"invalid JSON in patch body: {err}", code=400) from err


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", dict: "object", list: "array", str: "string"}
    return names.get(type(value), "number")


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but true does not equal 1 (as Python's == would have it)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch


def apply_merge_patch(original: dict, patch: Any) -> dict:
    """RFC 7386: objects merge recursively, ``null`` removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        raise PatchError(f"merge patch must be a JSON object, not {_json_type(patch)}", code=400)
    return _merge_patch(original, patch)


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)  # never alias the request body
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


# --------------------------------------------------------------------------------------------
# RFC 6902 JSON patch
#
# Operations work in place on a deep copy held as the "" member of a holder dict, so the root
# needs no special case: a pointer's tokens are ["", *tokens] and replacing "" replaces the doc.

_MISSING = object()
_BAD_ESCAPE = re.compile(r"~(?![01])")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_OPERATIONS = ("add", "remove", "replace", "move", "copy", "test")


class _PointerError(Exception):
    pass


def apply_json_patch(original: dict, ops: Any) -> dict:
    """RFC 6902. A failing operation raises and leaves nothing applied (we work on a copy)."""
    if not isinstance(ops, list):
        raise PatchError(f"json patch must be a JSON array, not {_json_type(ops)}", code=400)
    if len(ops) > MAX_JSON_PATCH_OPERATIONS:
        raise PatchError(f"the allowed maximum operations in a JSON patch is "
                         f"{MAX_JSON_PATCH_OPERATIONS}, got {len(ops)}")
    holder = {"": copy.deepcopy(original)}
    for index, op in enumerate(ops):
        _apply_operation(holder, index, op)
    doc = holder.get("", _MISSING)
    if not isinstance(doc, dict):
        raise PatchError("json patch result must be a JSON object, not "
                         + ("nothing" if doc is _MISSING else _json_type(doc)))
    return doc


def _apply_operation(holder: dict, index: int, op: Any) -> None:
    if not isinstance(op, dict):
        raise PatchError(f"json patch operation {index} is not a JSON object", code=400)
    name, value = op.get("op"), op.get("value", _MISSING)
    where = f"json patch operation {index} ({name} {op.get('path')})"
    if name not in _OPERATIONS:
        raise PatchError(f"{where}: unknown operation {name!r}", code=400)
    if value is _MISSING and name in ("add", "replace", "test"):
        raise PatchError(f"{where}: missing 'value'", code=400)
    path = _parse_pointer(op.get("path", _MISSING), where, "path")
    source = _parse_pointer(op.get("from", _MISSING), where, "from") \
        if name in ("move", "copy") else []
    if name == "move" and len(path) > len(source) and path[:len(source)] == source:
        raise PatchError(f"{where}: cannot move a value into one of its own children")
    try:
        if name == "add":
            _add(holder, path, copy.deepcopy(value))
        elif name == "remove":
            _remove(holder, path)
        elif name == "replace":
            parent, key = _locate(holder, path)
            parent[key] = copy.deepcopy(value)
        elif name == "move":
            _add(holder, path, _remove(holder, source))
        elif name == "copy":
            _add(holder, path, copy.deepcopy(_get(holder, source)))
        elif not _json_equal(_get(holder, path), value):
            raise PatchError(f"{where}: test failed, the value differs")
    except _PointerError as err:
        raise PatchError(f"{where}: {err}") from None


def _parse_pointer(pointer: Any, where: str, member: str) -> list[str]:
    """RFC 6901 '/a/b~1c' -> ['', 'a', 'b/c'] (holder-relative). ~1 is decoded before ~0, so
    '~01' means the key '~1'."""
    if pointer is _MISSING:
        raise PatchError(f"{where}: missing '{member}'", code=400)
    if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
        raise PatchError(f"{where}: '{member}' {pointer!r} is not a JSON pointer", code=400)
    if _BAD_ESCAPE.search(pointer):
        raise PatchError(f"{where}: '{member}' {pointer!r} has an invalid ~ escape", code=400)
    return [""] + [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _key(parent: Any, token: str, *, adding: bool = False) -> Any:
    """The member name or index ``token`` denotes in ``parent``: it must exist unless adding."""
    if isinstance(parent, dict):
        if token not in parent and not adding:
            raise _PointerError(f"path not found: no member {token!r}")
        return token
    if not isinstance(parent, list):
        raise _PointerError(f"path not found: {token!r} is below a {_json_type(parent)}")
    if token == "-" and adding:
        return len(parent)
    if not _ARRAY_INDEX.fullmatch(token):
        raise _PointerError(f"{token!r} is not an array index")
    if int(token) > len(parent) - (0 if adding else 1):
        raise _PointerError(f"array index {token} out of bounds (length {len(parent)})")
    return int(token)


def _get(holder: dict, tokens: list[str]) -> Any:
    value: Any = holder
    for token in tokens:
        value = value[_key(value, token)]
    return value


def _locate(holder: dict, tokens: list[str], *, adding: bool = False) -> tuple[Any, Any]:
    parent = _get(holder, tokens[:-1])
    return parent, _key(parent, tokens[-1], adding=adding)


def _add(holder: dict, tokens: list[str], value: Any) -> None:
    parent, key = _locate(holder, tokens, adding=True)
    if isinstance(parent, list):
        parent.insert(key, value)
    else:
        parent[key] = value


def _remove(holder: dict, tokens: list[str]) -> Any:
    parent, key = _locate(holder, tokens)
    return parent.pop(key)


# --------------------------------------------------------------------------------------------
# Strategic merge patch: metadata
#
# (patchStrategy, patchMergeKey) per field path, from the Go struct tags in k8s.io/api. Paths
# are dotted field names; list elements add no component ("spec.containers.env" is the env of
# every container). A list with no entry, or with strategy "", is atomic: the patch replaces it.
# The "" entries document fields checked to carry no patchStrategy tag. "retainKeys" only
# enables the $retainKeys directive, which (as in strategicpatch.mergeMap) is honoured anywhere.

Meta = Mapping[str, tuple[str, str]]
_ATOMIC = ("", "")
_BY_NAME = ("merge", "name")
_BY_TYPE = ("merge", "type")
_OBJECT_META: Meta = {"finalizers": ("merge", ""), "ownerReferences": ("merge", "uid")}
_CONTAINER: Meta = {  # Container, and EphemeralContainerCommon which has the same tags
    "ports": ("merge", "containerPort"), "env": _BY_NAME, "volumeMounts": ("merge", "mountPath"),
    "volumeDevices": ("merge", "devicePath"), "envFrom": _ATOMIC,
}
_POD_SPEC: Meta = {
    "volumes": ("merge,retainKeys", "name"), "containers": _BY_NAME, "initContainers": _BY_NAME,
    "ephemeralContainers": _BY_NAME, "imagePullSecrets": _BY_NAME, "hostAliases": ("merge", "ip"),
    "topologySpreadConstraints": ("merge", "topologyKey"), "schedulingGates": _BY_NAME,
    "resourceClaims": ("merge,retainKeys", "name"), "tolerations": _ATOMIC,
    "readinessGates": _ATOMIC,
}
_POD_STATUS: Meta = {
    "conditions": _BY_TYPE, "podIPs": ("merge", "ip"), "hostIPs": ("merge", "ip"),
    "resourceClaimStatuses": ("merge,retainKeys", "name"), "containerStatuses": _ATOMIC,
}
_CONDITIONS: Meta = {"conditions": _BY_TYPE}
_KINDS: dict[str, dict[str, Meta]] = {  # kind -> {path prefix: fields under it}
    "Pod": {"spec": _POD_SPEC, "status": _POD_STATUS},
    "Service": {"spec": {"ports": ("merge", "port"), "externalIPs": _ATOMIC},
                "status": _CONDITIONS, "status.loadBalancer": {"ingress": _ATOMIC}},
    "Node": {"spec": {"podCIDRs": ("merge", ""), "taints": _ATOMIC},
             "status": {"addresses": _BY_TYPE, "conditions": _BY_TYPE, "images": _ATOMIC,
                        "volumesAttached": _ATOMIC, "volumesInUse": _ATOMIC}},
    "Namespace": {"spec": {"finalizers": _ATOMIC}, "status": _CONDITIONS},
    "Endpoints": {"": {"subsets": _ATOMIC}},
    "EndpointSlice": {"": {"endpoints": _ATOMIC, "ports": _ATOMIC}},
    "NetworkPolicy": {"spec": {"ingress": _ATOMIC, "egress": _ATOMIC, "policyTypes": _ATOMIC}},
    "ConfigMap": {}, "Event": {}, "Lease": {},
    "DaemonSet": {"status": _CONDITIONS, "spec.template.metadata": _OBJECT_META},
    "Deployment": {"spec": {"strategy": ("retainKeys", "")}, "status": _CONDITIONS,
                   "spec.template.metadata": _OBJECT_META},
    "ServiceAccount": {"": {"secrets": _BY_NAME, "imagePullSecrets": _ATOMIC}},
    # k8s.io/api/rbac/v1 tags none of its lists: rules, subjects and selectors are replaced whole.
    "ClusterRole": {"": {"rules": _ATOMIC}, "aggregationRule": {"clusterRoleSelectors": _ATOMIC}},
    "Role": {"": {"rules": _ATOMIC}},
    "ClusterRoleBinding": {"": {"subjects": _ATOMIC}},
    "RoleBinding": {"": {"subjects": _ATOMIC}},
}
_POD_SPEC_AT = {"Pod": "spec", "DaemonSet": "spec.template.spec",
                "Deployment": "spec.template.spec"}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


@cache
def patch_meta(kind: str) -> Meta:
    """Field path -> (patchStrategy, patchMergeKey) for ``kind``; unknown kinds get ObjectMeta's
    tags only, so their other lists are replaced rather than merged."""
    if kind not in _KINDS:
        log.debug("no strategic merge patch metadata for kind %r beyond ObjectMeta", kind)
    sections: dict[str, Meta] = {"metadata": _OBJECT_META, **_KINDS.get(kind, {})}
    if kind in _POD_SPEC_AT:
        pod_spec = _POD_SPEC_AT[kind]
        sections[pod_spec] = _POD_SPEC
        for containers in ("containers", "initContainers", "ephemeralContainers"):
            sections[_join(pod_spec, containers)] = _CONTAINER
    return {_join(prefix, name): tag
            for prefix, fields in sections.items() for name, tag in fields.items()}


def _merges(meta: Meta, path: str) -> tuple[bool, str]:
    strategy, merge_key = meta.get(path, _ATOMIC)
    return "merge" in strategy.split(","), merge_key


# --------------------------------------------------------------------------------------------
# Strategic merge patch: merging

_PATCH = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"


def apply_strategic_merge_patch(original: dict, patch: Any, kind: str) -> dict:
    """k8s.io/apimachinery strategicpatch.StrategicMergePatch, for the built-in ``kind``."""
    if not isinstance(patch, dict):
        raise PatchError(f"strategic merge patch must be a JSON object, not {_json_type(patch)}",
                         code=400)
    return _merge_map(original, patch, "", patch_meta(kind))


def _merge_map(original: dict | None, patch: dict, path: str, meta: Meta) -> dict:
    """Merge ``patch`` into a copy of ``original``. Merging into None (a field that is new)
    still strips directives and nulls, so they never reach the stored object."""
    where = path or "the object"
    if _PATCH in patch:
        if patch[_PATCH] == "replace":
            return _merge_map(None, {k: v for k, v in patch.items() if k != _PATCH}, path, meta)
        if patch[_PATCH] == "delete":
            return {}  # as upstream: an empty map, which omitempty then drops for map fields
        raise PatchError(f"unknown $patch directive {patch[_PATCH]!r} at {where}", code=400)
    result = dict(original or {})
    orders: dict[str, Any] = {}
    deletions: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for key, value in patch.items():
        if key.startswith(_SET_ORDER):
            orders[key[len(_SET_ORDER):]] = value
        elif key.startswith(_DELETE_PRIMITIVES):
            deletions[key[len(_DELETE_PRIMITIVES):]] = value
        elif key == _RETAIN_KEYS:
            _retain_keys(result, patch, value, where)
        elif key.startswith("$"):
            raise PatchError(f"unknown directive {key!r} at {where}", code=400)
        else:
            fields[key] = value
    for key, value in fields.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_value(result.get(key), value, _join(path, key), meta)
    for key, order in orders.items():
        live = (original or {}).get(key)
        _set_element_order(result, key, order, fields.get(key), live, _join(path, key), meta)
    for key, doomed in deletions.items():
        if not isinstance(doomed, list):
            raise PatchError(f"{_DELETE_PRIMITIVES}{key} at {where} must be a list", code=400)
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if _index_in(doomed, v, "") < 0]
    return result


def _merge_value(original: Any, value: Any, path: str, meta: Meta) -> Any:
    if isinstance(value, dict):
        return _merge_map(original if isinstance(original, dict) else None, value, path, meta)
    if not isinstance(value, list):
        return value
    merge, merge_key = _merges(meta, path)
    if merge:
        base = original if isinstance(original, list) else []
        return _merge_list(base, value, path, merge_key, meta)
    return [_merge_value(None, item, path, meta) for item in value]  # atomic list: replaced


def _retain_keys(result: dict, patch: dict, retain: Any, where: str) -> None:
    """$retainKeys: clear every original key not listed; the patch may only set listed keys."""
    if not isinstance(retain, list):
        raise PatchError(f"$retainKeys at {where} must be a list", code=400)
    for key, value in patch.items():
        if value is not None and not key.startswith("$") and key not in retain:
            raise PatchError(f"$retainKeys at {where} does not list {key!r}, which the patch sets")
    for key in [k for k in result if k not in retain]:
        del result[key]


def _same(item: Any, other: Any, merge_key: str) -> bool:
    if not merge_key:
        return _json_equal(item, other)
    return (isinstance(item, dict) and isinstance(other, dict) and merge_key in item
            and merge_key in other and _json_equal(item[merge_key], other[merge_key]))


def _index_in(items: list, item: Any, merge_key: str) -> int:
    return next((i for i, other in enumerate(items) if _same(item, other, merge_key)), -1)


def _merge_list(original: list, patch: list, path: str, merge_key: str, meta: Meta) -> list:
    """A list tagged patchStrategy=merge: objects merge by ``merge_key``, scalars form a union."""
    kinds = {type(item) if isinstance(item, (dict, list)) else None for item in original + patch}
    if list in kinds or len(kinds) > 1:
        raise PatchError(f"cannot merge {path}: lists of lists, or of objects and scalars mixed")
    if dict not in kinds:
        merged: list = []
        for value in original + patch:  # a union without duplicates
            if _index_in(merged, value, "") < 0:
                merged.append(value)
        return _interleave(merged, patch, original, "")
    if not merge_key:
        raise PatchError(f"cannot merge {path}: a list of objects needs a merge key")
    current, items = list(original), []
    for element in patch:
        directive = element.get(_PATCH)
        if directive is None:
            items.append(element)
        elif directive == "delete":
            doomed = {merge_key: _merge_key_value(element, merge_key, path)}
            current = [item for item in current if not _same(item, doomed, merge_key)]
        elif directive != "replace":
            raise PatchError(f"unsupported $patch {directive!r} in list {path}", code=400)
    if any(element.get(_PATCH) == "replace" for element in patch):
        return [_merge_map(None, element, path, meta) for element in items]
    merged = list(current)
    for element in items:
        _merge_key_value(element, merge_key, path)
        at = _index_in(merged, element, merge_key)
        if at >= 0:
            merged[at] = _merge_map(merged[at], element, path, meta)
        else:
            merged.append(_merge_map(None, element, path, meta))
    return _interleave(merged, items, current, merge_key)


def _merge_key_value(element: dict, merge_key: str, path: str) -> Any:
    if merge_key not in element:
        raise PatchError(f"an element of {path} lacks its merge key {merge_key!r}: {element}")
    return element[merge_key]


def _interleave(merged: list, patch_order: list, live_order: list, merge_key: str) -> list:
    """strategicpatch's normalizeElementOrder: items named in ``patch_order`` follow it, the
    others keep their live order, and a live-only item goes before a patch item only if both
    are in ``live_order`` and it came first there, so brand-new items land at the front."""
    in_patch = sorted((m for m in merged if _index_in(patch_order, m, merge_key) >= 0),
                      key=lambda m: _index_in(patch_order, m, merge_key))
    live_only = [m for m in merged if _index_in(patch_order, m, merge_key) < 0]
    result: list = []
    while live_only and in_patch:
        left = _index_in(live_order, live_only[0], merge_key)
        right = _index_in(live_order, in_patch[0], merge_key)
        result.append(live_only.pop(0) if 0 <= left < right else in_patch.pop(0))
    return result + live_only + in_patch


def _set_element_order(result: dict, key: str, order: Any, patch_list: Any, live: Any,
                       path: str, meta: Meta) -> None:
    """$setElementOrder/<key>, sent by kubectl apply: reorder the merged list to ``order``."""
    where = f"{_SET_ORDER}{path}"
    if not isinstance(order, list):
        raise PatchError(f"{where} must be a list", code=400)
    merge, merge_key = _merges(meta, path)
    if not merge or not isinstance(result.get(key), list):
        return  # only merging lists can be ordered; kubectl sends the directive for no other
    if merge_key and not all(isinstance(e, dict) and merge_key in e for e in order):
        raise PatchError(f"{where}: every entry needs the merge key {merge_key!r}", code=400)
    # Like validatePatchWithSetOrderList: patch items (deletions aside) appear in the order list,
    # in the same relative order.
    position = 0
    for item in patch_list if isinstance(patch_list, list) else []:
        if isinstance(item, dict) and _PATCH in item:
            continue
        while position < len(order) and not _same(item, order[position], merge_key):
            position += 1
        if position == len(order):
            raise PatchError(f"{where}: the patch list does not follow the order list", code=400)
        position += 1
    live_order = live if isinstance(live, list) else []
    result[key] = _interleave(result[key], order, live_order, merge_key)
