"""What each API verb means, independent of HTTP: create/get/list/update/patch/delete/watch on
the Store, with the real server's semantics (system metadata, optimistic concurrency, status
subresources, graceful deletion and finalizers, ClusterIP/NodePort allocation, paginated lists,
watch resume and 410 Gone).

Every mutation runs under the store lock as read → compute → validate → allocate → commit, so a
rejected request changes nothing.
"""

from __future__ import annotations

import base64
import copy
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from netplane.apiserver import status as st
from netplane.apiserver.allocators import AllocationError, ServiceAllocator
from netplane.apiserver.defaults import apply_defaults
from netplane.apiserver.patch import PatchError, UnsupportedPatchType, apply_patch
from netplane.apiserver.resources import RESOURCES, ResourceType, lookup
from netplane.apiserver.selectors import (
    SelectorError,
    matcher,
    parse_field_selector,
    parse_label_selector,
)
from netplane.apiserver.store import Event, Store, Stored
from netplane.apiserver.validation import (
    prepare_service_update,
    validate_create,
    validate_status_update,
    validate_update,
)

log = logging.getLogger(__name__)

NAMESPACES = lookup("", "v1", "namespaces")
SERVICES = lookup("", "v1", "services")
assert NAMESPACES is not None and SERVICES is not None

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# Kinds whose spec changes bump metadata.generation.
_GENERATION_KINDS = {"Pod", "Service", "Deployment", "DaemonSet", "NetworkPolicy"}
# Deeper objects are refused (400): copying, validating and encoding recurse once per level, and
# no served kind comes anywhere near this.
MAX_DEPTH = 100


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a decoded JSON value nests dicts/lists more than `limit` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def parse_rv(value: str) -> int:
    """A resourceVersion parameter: decimal digits only (Python's int() would also take "-5",
    "+7", " 3" or other scripts' digits, which the real server's ParseUint refuses)."""
    if not (value.isascii() and value.isdigit()):
        raise st.bad_request(f"invalid resource version {value!r}")
    return int(value)


def now_rfc3339(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which objects a list/watch wants."""

    namespace: str | None
    label_selector: str | None = None
    field_selector: str | None = None


@dataclass(slots=True)
class WatchItem:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    stored: Stored | None = None  # the object for ADDED/MODIFIED/DELETED
    event: Event | None = None  # the log event, when the item is exactly one (shares encodings)
    body: dict[str, Any] | None = None  # BOOKMARK/ERROR object


class Api:
    def __init__(
        self,
        store: Store,
        allocator: ServiceAllocator,
        *,
        clock: Callable[[], float] = time.time,
        bookmark_interval: float = 60.0,
    ):
        self.store = store
        self.allocator = allocator
        self.clock = clock
        self.bookmark_interval = bookmark_interval
        self._snapshots: OrderedDict[str, tuple[float, int, list[Stored]]] = OrderedDict()
        self._snap_lock = threading.Lock()
        with store.lock:
            allocator.rebuild(s.obj for _, s in store.items(SERVICES.key))
            for ns in DEFAULT_NAMESPACES:
                if store.get(NAMESPACES.key, "", ns) is None:
                    self.create(NAMESPACES, None, {"metadata": {"name": ns}})

    # -- helpers ------------------------------------------------------------------------------------

    def _check_namespace(self, rt: ResourceType, ns: str | None) -> str:
        if not rt.namespaced:
            return ""
        if not ns:
            raise st.bad_request("the server could not find the requested resource: a namespace is required")
        if self.store.get(NAMESPACES.key, "", ns) is None:
            raise st.namespace_not_found(ns)
        return ns

    def _load_body(self, rt: ResourceType, ns: str, body: Any, url_name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise st.bad_request(f"the body of the request must be a {rt.kind} object, got {type(body).__name__}")
        if too_deep(body):
            raise st.bad_request(f"the object is nested more than {MAX_DEPTH} levels deep")
        obj = copy.deepcopy(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version not in (None, "", rt.api_version):
            raise st.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            )
        if kind not in (None, "", rt.kind):
            raise st.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise st.bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise st.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if url_name is not None and meta.get("name") not in (None, "", url_name):
            raise st.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({url_name})"
            )
        if url_name is not None:
            meta["name"] = url_name
        for system_field in ("selfLink", "managedFields"):
            meta.pop(system_field, None)
        return obj

    def _validate(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
                  subresource: str | None = None) -> None:
        if old is None:
            causes = validate_create(rt, obj)
        elif subresource == "status":
            causes = validate_status_update(rt, obj, old)
        else:
            causes = validate_update(rt, obj, old)
        if causes:
            name = str((obj.get("metadata") or {}).get("name") or "")
            raise st.invalid(rt, name, [c.to_status_cause() for c in causes])

    def _allocate(self, rt: ResourceType, old: dict[str, Any] | None, obj: dict[str, Any]):
        if rt is not SERVICES:
            return obj, None
        try:
            return self.allocator.plan(old, obj)
        except AllocationError as e:
            name = str((obj.get("metadata") or {}).get("name") or "")
            raise st.invalid(rt, name, [{"reason": e.reason, "message": f"Invalid value: {e.value!r}: {e.detail}".replace("'", '"'), "field": e.field}]) from None

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, ns: str | None, name: str) -> Stored:
        ns = ns or "" if rt.namespaced else ""
        found = self.store.get(rt.key, ns, name)
        if found is None:
            raise st.not_found(rt, name)
        return found

    def list(
        self,
        rt: ResourceType,
        sel: Selection,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> tuple[list[Stored], dict[str, Any]]:
        match = self._matcher(rt, sel)
        self._check_list_options(resource_version, resource_version_match, continue_token)
        if continue_token:
            snap_id, rv, start = self._decode_continue(continue_token)
            with self._snap_lock:
                snap = self._snapshots.get(snap_id)
            if snap is None:
                raise st.gone(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                )
            items = snap[2]
        else:
            with self.store.lock:
                rv = self.store.rv
                self._check_list_rv(resource_version, resource_version_match, rv)
                ns = sel.namespace if rt.namespaced else None
                items = [s for _, s in self.store.items(rt.key, ns)]
            if match is not None:
                items = [s for s in items if match(s.obj)]
            start, snap_id = 0, ""
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if not limit or limit <= 0 or start + limit >= len(items):
            return items[start:], meta
        end = start + limit
        if not snap_id:
            snap_id = secrets.token_hex(8)
            with self._snap_lock:
                self._snapshots[snap_id] = (self.clock(), rv, items)
                self._expire_snapshots()
        meta["continue"] = self._encode_continue(snap_id, rv, end)
        meta["remainingItemCount"] = len(items) - end
        return items[start:end], meta

    @staticmethod
    def _check_list_options(rv: str | None, match: str | None, continue_token: str | None) -> None:
        """ValidateListOptions (422) and the storage's continue/resourceVersion rule (400)."""
        causes = []
        if match:
            if not rv:
                causes.append(("FieldValueForbidden", "Forbidden: resourceVersionMatch is forbidden "
                                                      "unless resourceVersion is provided"))
            if continue_token:
                causes.append(("FieldValueForbidden", "Forbidden: resourceVersionMatch is forbidden "
                                                      "when continue is provided"))
            if match == "Exact" and rv == "0":
                causes.append(("FieldValueForbidden", 'Forbidden: resourceVersionMatch "exact" is '
                                                      'forbidden for resourceVersion "0"'))
            if match not in ("Exact", "NotOlderThan"):
                causes.append(("FieldValueNotSupported", f'Unsupported value: "{match}": supported '
                                                         'values: "Exact", "NotOlderThan", ""'))
        if causes:
            texts = [f"resourceVersionMatch: {m}" for _, m in causes]
            summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
            raise st.ApiStatus(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {summary}', {
                "group": "meta.k8s.io", "kind": "ListOptions",
                "causes": [{"reason": r, "message": m, "field": "resourceVersionMatch"} for r, m in causes]})
        if continue_token and rv not in (None, "", "0"):
            raise st.bad_request("specifying resource version is not allowed when using continue")

    def _check_list_rv(self, rv_param: str | None, match: str | None, current: int) -> None:
        if rv_param in (None, "", "0"):
            return
        want = parse_rv(rv_param)
        if match == "Exact" and want != current:
            if want < current:
                raise st.gone(f"too old resource version: {want} ({current})")
            raise st.ApiStatus(504, "Timeout", f"Too large resource version: {want}, current: {current}")
        if want > current:
            raise st.ApiStatus(504, "Timeout", f"Too large resource version: {want}, current: {current}")

    def _expire_snapshots(self) -> None:
        # A handful of concurrent paginated lists at most; keep them 5 minutes (as etcd compaction).
        cutoff = self.clock() - 300
        while self._snapshots and (
            len(self._snapshots) > 64 or next(iter(self._snapshots.values()))[0] < cutoff
        ):
            self._snapshots.popitem(last=False)

    @staticmethod
    def _encode_continue(snap_id: str, rv: int, start: int) -> str:
        raw = orjson.dumps({"v": "np1", "s": snap_id, "rv": rv, "i": start})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[str, int, int]:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            return str(data["s"]), int(data["rv"]), int(data["i"])
        except Exception:
            raise st.bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None

    def _matcher(self, rt: ResourceType, sel: Selection):
        try:
            return matcher(
                parse_label_selector(sel.label_selector),
                parse_field_selector(sel.field_selector, rt.field_labels),
            )
        except SelectorError as e:
            raise st.bad_request(str(e)) from None

    # -- writes --------------------------------------------------------------------------------------

    def create(self, rt: ResourceType, ns: str | None, body: Any, *, dry_run: bool = False) -> Stored:
        with self.store.lock:
            ns = self._check_namespace(rt, ns)
            obj = self._load_body(rt, ns, body, None)
            if rt.has_status and rt.kind != "Node":
                # PrepareForCreate resets status (unvalidated on create): it is set through /status.
                obj.pop("status", None)
            meta = obj["metadata"]
            if not meta.get("name") and isinstance(meta.get("generateName"), str) and meta["generateName"]:
                meta["name"] = self._generate_name(rt, ns, meta["generateName"])
            for system_field in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(system_field, None)
            meta["creationTimestamp"] = now_rfc3339(self.clock)
            if rt.kind in _GENERATION_KINDS:
                meta["generation"] = 1
            apply_defaults(rt.kind, obj)
            self._validate(rt, obj, None)
            name = meta["name"]
            if self.store.get(rt.key, ns, name) is not None:
                raise st.already_exists(rt, name)
            obj, plan = self._allocate(rt, None, obj)
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            if dry_run:
                return Stored.of(obj)
            meta["resourceVersion"] = str(self.store.next_rv())
            stored = self.store.commit(rt.key, ns, name, obj, "ADDED")
            if plan is not None:
                self.allocator.apply(plan)
            return stored

    def _generate_name(self, rt: ResourceType, ns: str, prefix: str) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"  # as apimachinery: no vowels, no confusables
        for _ in range(8):
            name = prefix[:58] + "".join(secrets.choice(alphabet) for _ in range(5))
            if self.store.get(rt.key, ns, name) is None:
                return name
        raise st.ApiStatus(409, "AlreadyExists", f"could not generate a unique name from {prefix!r}")

    def update(
        self, rt: ResourceType, ns: str | None, name: str, body: Any, *,
        subresource: str | None = None, dry_run: bool = False,
    ) -> Stored:
        with self.store.lock:
            ns, current = self._current(rt, ns, name)
            obj = self._load_body(rt, ns, body, name)
            self._check_precondition_rv(rt, name, obj, current)
            return self._write_update(rt, ns, name, current, obj, subresource, dry_run)

    def _current(self, rt: ResourceType, ns: str | None, name: str) -> tuple[str, Stored]:
        """The namespace (checked to exist) and the stored object, or 404."""
        ns = self._check_namespace(rt, ns)
        current = self.store.get(rt.key, ns, name)
        if current is None:
            raise st.not_found(rt, name)
        return ns, current

    @staticmethod
    def _check_precondition_rv(rt: ResourceType, name: str, obj: dict[str, Any], current: Stored) -> None:
        """Optimistic concurrency: a resourceVersion in the body must be the stored one (409)."""
        want_rv = obj["metadata"].get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != current.obj["metadata"]["resourceVersion"]:
            raise st.conflict(rt, name, st.STALE)

    def patch(
        self, rt: ResourceType, ns: str | None, name: str, content_type: str, body: bytes, *,
        subresource: str | None = None, dry_run: bool = False,
    ) -> Stored:
        with self.store.lock:
            ns, current = self._current(rt, ns, name)
            try:
                patched = apply_patch(current.obj, content_type, body, rt.kind)
            except RecursionError:  # decoding and merging recurse once per nesting level
                raise st.bad_request(f"the patch is nested more than {MAX_DEPTH} levels deep") from None
            except UnsupportedPatchType as e:
                raise st.unsupported_media_type(str(e)) from None
            except PatchError as e:
                if e.code == 400:
                    raise st.bad_request(str(e)) from None
                raise st.ApiStatus(422, "Invalid", f'{rt.kind} "{name}" is invalid: {e}') from None
            obj = self._load_body(rt, ns, patched, name)
            # A patch may carry a resourceVersion precondition (kubectl apply does not, a json patch
            # `test`/`replace` of it does): honour it like an update.
            self._check_precondition_rv(rt, name, obj, current)
            return self._write_update(rt, ns, name, current, obj, subresource, dry_run)

    def bind(
        self, rt: ResourceType, ns: str | None, name: str, body: Any, *, dry_run: bool = False,
    ) -> dict[str, Any]:
        """POST pods/NAME/binding (BindingREST): set spec.nodeName of an unbound pod, which a spec
        update may not change, and its PodScheduled condition. Answers a Success Status."""
        if rt.kind != "Pod" or not isinstance(body, dict):
            raise st.bad_request("the body of the request must be a Binding object")
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        if meta.get("name") not in (None, "", name):
            raise st.bad_request("name in URL does not match name in Binding object")
        target = body.get("target") if isinstance(body.get("target"), dict) else {}
        node = target.get("name")
        if target.get("kind") not in (None, "", "Node"):
            raise st.invalid(rt, name, [{"reason": "FieldValueNotSupported", "field": "target.kind",
                                         "message": "Unsupported value: must be empty or 'Node'"}])
        if not isinstance(node, str) or not node:
            raise st.invalid(rt, name, [{"reason": "FieldValueRequired", "field": "target.name",
                                         "message": "Required value"}])
        with self.store.lock:
            ns, current = self._current(rt, ns, name)
            obj = copy.deepcopy(current.obj)
            pod_meta, spec = obj["metadata"], obj.setdefault("spec", {})
            if meta.get("uid") and meta["uid"] != pod_meta.get("uid"):
                raise st.conflict(rt, name, f"Precondition failed: UID in precondition: {meta['uid']}, "
                                            f"UID in object meta: {pod_meta.get('uid')}")
            if pod_meta.get("deletionTimestamp"):
                raise st.conflict(rt, name, f"pod {name} is being deleted, cannot be assigned to a host")
            if spec.get("nodeName"):
                raise st.conflict(rt, name, f"pod {name} is already assigned to node {spec['nodeName']!r}")
            if spec.get("schedulingGates"):
                raise st.conflict(rt, name, f"pod {name} has non-empty .spec.schedulingGates")
            spec["nodeName"] = node
            conditions = obj.setdefault("status", {}).setdefault("conditions", [])
            cond = next((c for c in conditions if isinstance(c, dict) and c.get("type") == "PodScheduled"), None)
            if cond is None:
                cond = {"type": "PodScheduled"}
                conditions.append(cond)
            if cond.get("status") != "True":
                cond.update(status="True", lastTransitionTime=now_rfc3339(self.clock))
            cond.update(lastProbeTime=None)
            for stale in ("reason", "message"):
                cond.pop(stale, None)
            if not dry_run:
                pod_meta["resourceVersion"] = str(self.store.next_rv())
                self.store.commit(rt.key, ns, name, obj, "MODIFIED")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _write_update(
        self, rt: ResourceType, ns: str, name: str, current: Stored, obj: dict[str, Any],
        subresource: str | None, dry_run: bool,
    ) -> Stored:
        old = current.obj
        meta, old_meta = obj["metadata"], old["metadata"]
        for system_field in ("creationTimestamp", "deletionTimestamp", "generation"):
            if system_field in old_meta:
                meta[system_field] = old_meta[system_field]
            else:
                meta.pop(system_field, None)
        # As BeforeUpdate: a missing uid / grace period is the stored one; a different one is left
        # for validation to reject (immutable), not silently replaced.
        for system_field in ("uid", "deletionGracePeriodSeconds"):
            if meta.get(system_field) in (None, "") and system_field in old_meta:
                meta[system_field] = old_meta[system_field]
        # The caller checked any resourceVersion precondition; an unconditional write of the
        # stored object must still compare equal below (a no-op keeps the version).
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if subresource == "status":
            # Status writes change only status (ResetObjectMetaForStatus + copy of the old spec).
            new_status = obj.get("status")
            new_meta = obj["metadata"]
            obj = copy.deepcopy(old)
            if new_status is None:
                obj.pop("status", None)
            else:
                obj["status"] = new_status
            meta = obj["metadata"]
            if rt.status_keeps_metadata:
                for key in ("labels", "annotations"):
                    if new_meta.get(key) is None:
                        meta.pop(key, None)
                    else:
                        meta[key] = new_meta[key]
        elif rt.has_status:
            if "status" in old:
                obj["status"] = copy.deepcopy(old["status"])
            else:
                obj.pop("status", None)
        if rt is SERVICES and subresource != "status":
            # Carry over allocated values a replace left out, drop ones a type change leaves behind.
            obj = prepare_service_update(obj, old)
            meta = obj["metadata"]
        apply_defaults(rt.kind, obj)
        if rt.kind in _GENERATION_KINDS and obj.get("spec") != old.get("spec"):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        self._validate(rt, obj, old, subresource)
        obj, plan = self._allocate(rt, old, obj)
        meta = obj["metadata"]
        if obj == old:
            return current  # a no-op write changes nothing, not even the resourceVersion
        if dry_run:
            return Stored.of(obj)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and old_meta.get("finalizers"):
            # The last finalizer was removed from an object being deleted: it goes now.
            return self._remove(rt, ns, name, obj)
        meta["resourceVersion"] = str(self.store.next_rv())
        stored = self.store.commit(rt.key, ns, name, obj, "MODIFIED")
        if plan is not None:
            self.allocator.apply(plan)
        return stored

    def delete(
        self, rt: ResourceType, ns: str | None, name: str, options: dict[str, Any] | None = None,
        *, dry_run: bool = False,
    ) -> Stored:
        options = options or {}
        # DeleteOptions of the wrong shape fail to decode upstream (400), whatever the object.
        if not isinstance(options.get("preconditions", {}), (dict, type(None))):
            raise st.bad_request("DeleteOptions.preconditions must be an object")
        grace = options.get("gracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
            raise st.bad_request(f"invalid gracePeriodSeconds {grace!r}: must be an integer")
        with self.store.lock:
            ns, current = self._current(rt, ns, name)
            meta = current.obj["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise st.conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                            f"UID in object meta: {meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
                raise st.conflict(rt, name, f"Precondition failed: ResourceVersion in precondition: "
                                            f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                            f"{meta.get('resourceVersion')}")
            if dry_run:
                return current
            grace = self._grace_period(rt, current.obj, options)
            if meta.get("finalizers") or grace > 0 or meta.get("deletionTimestamp"):
                # (a terminating pod's final delete stamps grace 0 before it goes, as upstream)
                return self._mark_deleting(rt, ns, name, current, grace)
            return self._remove(rt, ns, name, copy.deepcopy(current.obj))

    def _grace_period(self, rt: ResourceType, obj: dict[str, Any], options: dict[str, Any]) -> int:
        """Graceful deletion applies to pods a kubelet is running (bound to a node, not finished)."""
        if rt.kind != "Pod":
            return 0
        spec, pod_status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or pod_status.get("phase") in ("Succeeded", "Failed"):
            return 0
        grace = options.get("gracePeriodSeconds")  # (delete checked that it is an integer)
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
            grace = 30 if grace is None else grace  # (validated as an integer when stored)
        grace = max(0, int(grace))
        current = (obj.get("metadata") or {}).get("deletionGracePeriodSeconds")
        if current is not None and grace >= current:
            grace = current  # a later delete may shorten the grace period, never extend it
        return grace

    def _mark_deleting(self, rt: ResourceType, ns: str, name: str, current: Stored, grace: int) -> Stored:
        obj = copy.deepcopy(current.obj)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds") == grace:
            return current  # already terminating with this grace period
        meta["deletionTimestamp"] = (
            datetime.fromtimestamp(self.clock(), timezone.utc) + timedelta(seconds=grace)
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["deletionGracePeriodSeconds"] = grace
        if grace == 0 and not meta.get("finalizers"):
            return self._remove(rt, ns, name, obj)
        meta["resourceVersion"] = str(self.store.next_rv())
        return self.store.commit(rt.key, ns, name, obj, "MODIFIED")

    def _remove(self, rt: ResourceType, ns: str, name: str, obj: dict[str, Any]) -> Stored:
        if rt is NAMESPACES:  # whichever way it goes (delete, last finalizer removed): contents first
            self._delete_namespace_contents(name)
        old = self.store.get(rt.key, ns, name)
        obj["metadata"]["resourceVersion"] = str(self.store.next_rv())
        stored = self.store.commit(rt.key, ns, name, obj, "DELETED")
        if rt is SERVICES and old is not None:
            self.allocator.apply(self.allocator.plan_release(old.obj))
        return stored

    def _delete_namespace_contents(self, namespace: str) -> None:
        for rt in RESOURCES:
            if rt.namespaced:
                for (ns, name), stored in self.store.items(rt.key, namespace):
                    self._remove(rt, ns, name, copy.deepcopy(stored.obj))

    def delete_collection(self, rt: ResourceType, sel: Selection, options: dict[str, Any] | None = None,
                          *, dry_run: bool = False) -> list[Stored]:
        with self.store.lock:
            if rt.namespaced and sel.namespace:
                self._check_namespace(rt, sel.namespace)
            items, _ = self.list(rt, sel)
            out = []
            for s in items:
                m = s.obj["metadata"]
                out.append(self.delete(rt, m.get("namespace"), m["name"], options, dry_run=dry_run))
            return out

    # -- watch -----------------------------------------------------------------------------------------

    def watch(
        self,
        rt: ResourceType,
        sel: Selection,
        *,
        resource_version: str | None,
        allow_bookmarks: bool = False,
        timeout: float = 1800.0,
        send_initial_events: bool = False,
        stop: threading.Event | None = None,
        idle_tick: float = 1.0,
    ) -> Iterator[list[WatchItem]]:
        """Yield batches of watch items until the timeout, a 410, `stop`, or server shutdown.

        Validation errors (bad selectors or resourceVersion) raise before the first yield, so the
        HTTP layer can still answer with a plain Status. Empty batches are yielded every idle_tick
        seconds so the caller can notice a client that went away.
        """
        match = self._matcher(rt, sel)
        ns_filter = sel.namespace if rt.namespaced else None
        if resource_version not in (None, "", "0"):
            parse_rv(resource_version)  # type: ignore[arg-type]
        return self._watch_stream(rt, ns_filter, match, resource_version, allow_bookmarks, timeout,
                                  send_initial_events, stop or threading.Event(), idle_tick)

    def _watch_stream(self, rt, ns_filter, match, resource_version, allow_bookmarks, timeout,
                      send_initial_events, stop, idle_tick) -> Iterator[list[WatchItem]]:
        store = self.store
        deadline = time.monotonic() + timeout
        initial: list[WatchItem] = []
        with store.lock:
            if resource_version in (None, "", "0") or send_initial_events:
                # "Start at most recent": synthetic ADDED events for the current state first.
                for (ns, _), s in store.items(rt.key, ns_filter):
                    if match is None or match(s.obj):
                        initial.append(WatchItem("ADDED", s))
                seq = store.head_seq()
                seen_rv = store.rv
            else:
                want = int(resource_version)
                found = store.seq_after(want)
                if found is None:
                    yield [self._gone_item(want)]
                    return
                seq, seen_rv = found, want
        if initial:
            for i in range(0, len(initial), 500):
                yield initial[i : i + 500]
        if send_initial_events and allow_bookmarks:
            yield [self._bookmark(rt, seen_rv, initial_end=True)]
        next_bookmark = time.monotonic() + self.bookmark_interval
        while not stop.is_set():
            with store.lock:
                events = store.events_from(seq)
                if events == [] and not store.closed:
                    now = time.monotonic()
                    wait = min(idle_tick, deadline - now)
                    if allow_bookmarks:
                        wait = min(wait, next_bookmark - now)
                    if wait > 0:
                        store.changed.wait(wait)
                    events = store.events_from(seq)
                closed, head_rv = store.closed, store.rv
            if events is None:  # we fell behind the retained history while streaming
                yield [self._gone_item(seen_rv)]
                return
            if closed:
                return
            batch: list[WatchItem] = []
            for ev in events:
                item = self._filter_event(ev, rt, ns_filter, match)
                if item is not None:
                    batch.append(item)
            if events:
                seq, seen_rv = events[-1].seq + 1, events[-1].rv
            else:
                seen_rv = max(seen_rv, head_rv)  # caught up: everything up to head_rv was seen
            now = time.monotonic()
            if allow_bookmarks and now >= next_bookmark:
                batch.append(self._bookmark(rt, seen_rv))
                next_bookmark = now + self.bookmark_interval
            yield batch
            if now >= deadline:
                return

    @staticmethod
    def _filter_event(ev: Event, rt: ResourceType, ns_filter: str | None, match) -> WatchItem | None:
        if ev.rkey != rt.key or (ns_filter is not None and ev.namespace != ns_filter):
            return None
        if match is None:
            return WatchItem(ev.type, ev.new, ev)
        now_in = match(ev.new.obj)
        if ev.type == "MODIFIED":
            was_in = ev.old is not None and match(ev.old.obj)
            # Selector transitions look like adds and deletes to the watcher, as upstream.
            if now_in and was_in:
                return WatchItem("MODIFIED", ev.new, ev)
            if now_in:
                return WatchItem("ADDED", ev.new)
            if was_in:
                return WatchItem("DELETED", ev.new)
            return None
        return WatchItem(ev.type, ev.new, ev) if now_in else None

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int, initial_end: bool = False) -> WatchItem:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return WatchItem("BOOKMARK", body={"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})

    def _gone_item(self, rv: int) -> WatchItem:
        body = st.gone(f"too old resource version: {rv} ({self.store.compacted_rv + 1})").body()
        return WatchItem("ERROR", body=body)
