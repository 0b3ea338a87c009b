"""Server-side printing: stored objects (plain JSON dicts) -> `meta.k8s.io/v1` Table objects.

kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints whatever columns
the server sends, so `kubectl get` looks like a real cluster only if these columns, cell formats and
quirks match the real server's printers (kubernetes pkg/printers/internalversion/printers.go).
Like the real TableConvertor, every printer runs in "wide" mode: all columns (priority 1 included)
are sent, and kubectl hides priority-1 columns unless `-o wide`.

Pure: no I/O and no clock reads except `now` defaulting to the current time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from netplane.apiserver.resources import ResourceType

TABLE_GROUP_VERSION = "meta.k8s.io/v1"
INCLUDE_OBJECT_VALUES = ("None", "Metadata", "Object")

# ---------------------------------------------------------------------------------------------
# Defensive accessors: the store accepts objects whose fields may be missing or of odd types,
# and a table must still render, so every read goes through one of these.


def _d(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _l(v: Any) -> list:
    return v if isinstance(v, list) else []


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _i(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _dicts(v: Any) -> list[dict]:
    return [x for x in _l(v) if isinstance(x, dict)]


def _strs(v: Any) -> list[str]:
    return [x for x in _l(v) if isinstance(x, str)]


# ---------------------------------------------------------------------------------------------
# Time: RFC3339 (metav1.Time) and RFC3339 with microseconds (metav1.MicroTime).

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)$")


_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)


def parse_time(value: Any) -> datetime | None:
    """An aware datetime for an RFC3339 string; None when missing, unparseable or Go's zero
    time (which a Go server treats as unset)."""
    m = _RFC3339.match(_s(value).strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        tz = timezone.utc
        if zone not in ("Z", "z"):
            sign = -1 if zone[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        ts = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                      int((frac or "0")[:6].ljust(6, "0")), tzinfo=tz)
    except ValueError:
        return None
    return None if ts == _GO_ZERO_TIME else ts


def human_duration(d: timedelta) -> str:
    """apimachinery's duration.HumanDuration: ~2-3 significant figures."""
    us = (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds
    # Go's int(d.Seconds()) truncates toward zero, so -1.9s still counts as "almost now".
    seconds = abs(us) // 1_000_000 * (1 if us >= 0 else -1)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if dy == 0 else f"{years}y{dy}d"
    return f"{hours // 24 // 365}y"


def _since(ts: datetime | None, now: datetime) -> str:
    return "<unknown>" if ts is None else human_duration(now - ts)


def _age(obj: dict, now: datetime) -> str:
    return _since(parse_time(_d(obj.get("metadata")).get("creationTimestamp")), now)


# ---------------------------------------------------------------------------------------------
# Label formatting (labels.FormatLabels, metav1.FormatLabelSelector).


def format_labels(labels: Any) -> str:
    """Sorted `k=v` pairs, "<none>" when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted(_d(labels).items())) or "<none>"


def selector_string(sel: Any) -> str | None:
    """labels.Selector.String() of a LabelSelector; None when the selector is invalid.

    A missing selector (Nothing) and an empty one (Everything) both print as "".
    """
    reqs: list[tuple[str, str]] = []
    for k, v in _d(_d(sel).get("matchLabels")).items():
        reqs.append((str(k), f"{k}={v}"))
    for expr in _l(_d(sel).get("matchExpressions")):
        expr = _d(expr)
        key, op = _s(expr.get("key")), expr.get("operator")
        values = sorted(_strs(expr.get("values")))
        if op in ("In", "NotIn") and values:
            word = " in " if op == "In" else " notin "
            reqs.append((key, f"{key}{word}({','.join(values)})"))
        elif op in ("Exists", "DoesNotExist") and not values:
            reqs.append((key, key if op == "Exists" else f"!{key}"))
        else:
            return None  # NewRequirement rejects it, so the real printer shows an error marker
    # Selector.Add keeps requirements sorted by key.
    return ",".join(text for _, text in sorted(reqs, key=lambda r: r[0]))


def format_label_selector(sel: Any) -> str:
    text = selector_string(sel)
    return "<error>" if text is None else (text or "<none>")


# ---------------------------------------------------------------------------------------------
# Column definitions: (name, description[, type[, priority]]); type defaults to "string" and
# priority to 0. Priority-1 columns are the ones kubectl shows only with -o wide.

_NAME = ("Name", "Name must be unique within a namespace.")
_AGE = ("Age", "CreationTimestamp is the server time when this object was created.")
_CONTAINERS = ("Containers", "Names of each container in the template.", "string", 1)
_IMAGES = ("Images", "Images referenced by each container in the template.", "string", 1)

_COLUMNS: dict[str, tuple[tuple, ...]] = {
    "Pod": (
        _NAME,
        ("Ready", "The aggregate readiness state of this pod for accepting traffic."),
        ("Status", "The aggregate status of the containers in this pod."),
        ("Restarts", "The number of times the containers in this pod have been restarted and "
         "when the last container in this pod has restarted."),
        _AGE,
        ("IP", "IP address allocated to the pod.", "string", 1),
        ("Node", "The node the pod is scheduled onto.", "string", 1),
        ("Nominated Node", "The node nominated for this pod by preemption.", "string", 1),
        ("Readiness Gates", "Satisfied / declared pod readiness gates.", "string", 1),
    ),
    "Node": (
        _NAME,
        ("Status", "The status of the node"),
        ("Roles", "The roles of the node"),
        _AGE,
        ("Version", "Kubelet Version reported by the node."),
        ("Internal-IP", "List of addresses reachable to the node.", "string", 1),
        ("External-IP", "List of addresses reachable to the node.", "string", 1),
        ("OS-Image", "OS Image reported by the node.", "string", 1),
        ("Kernel-Version", "Kernel Version reported by the node.", "string", 1),
        ("Container-Runtime", "ContainerRuntime Version reported by the node.", "string", 1),
    ),
    "Service": (
        _NAME,
        ("Type", "type determines how the Service is exposed."),
        ("Cluster-IP", "clusterIP is the IP address of the service."),
        ("External-IP", "externalIPs and load-balancer ingress points of the service."),
        ("Port(s)", "The list of ports that are exposed by this service."),
        _AGE,
        ("Selector", "Route service traffic to pods matching this selector.", "string", 1),
    ),
    "Endpoints": (_NAME, ("Endpoints", "The union of all subsets."), _AGE),
    "EndpointSlice": (
        _NAME,
        ("AddressType", "The type of address carried by this slice."),
        ("Ports", "The network ports exposed by each endpoint."),
        ("Endpoints", "The unique endpoints in this slice."),
        _AGE,
    ),
    "Namespace": (_NAME, ("Status", "The status of the namespace"), _AGE),
    "ConfigMap": (_NAME, ("Data", "Number of configuration data keys."), _AGE),
    "Event": (
        ("Last Seen", "The time at which the most recent occurrence was recorded."),
        ("Type", "Type of this event (Normal, Warning)."),
        ("Reason", "Short, machine understandable reason for the transition."),
        ("Object", "The object that this event is about."),
        ("Subobject", "The field of the involved object this event is about.", "string", 1),
        ("Source", "The component reporting this event.", "string", 1),
        ("Message", "A human-readable description of the status of this operation."),
        ("First Seen", "The time at which the event was first recorded.", "string", 1),
        ("Count", "The number of times this event has occurred.", "string", 1),
        (*_NAME, "string", 1),
    ),
    "NetworkPolicy": (_NAME, ("Pod-Selector", "The pods this policy applies to."), _AGE),
    "DaemonSet": (
        _NAME,
        ("Desired", "Number of nodes that should be running the daemon pod.", "integer"),
        ("Current", "Number of nodes running at least one daemon pod.", "integer"),
        ("Ready", "Number of nodes with a ready daemon pod.", "integer"),
        ("Up-to-date", "Number of nodes running the updated daemon pod.", "integer"),
        ("Available", "Number of nodes with an available daemon pod.", "integer"),
        ("Node Selector", "NodeSelector of the pod template."),
        _AGE, _CONTAINERS, _IMAGES,
        ("Selector", "A label query over pods managed by the daemon set.", "string", 1),
    ),
    "Deployment": (
        _NAME,
        ("Ready", "Number of the pod with ready state"),
        ("Up-to-date", "Number of pods that have the desired template spec."),
        ("Available", "Number of available pods targeted by this deployment."),
        _AGE, _CONTAINERS, _IMAGES,
        ("Selector", "Label selector for pods.", "string", 1),
    ),
    "Lease": (_NAME, ("Holder", "The identity of the holder of the current lease."), _AGE),
}

# Built-in kinds without a printer get the generic apiserver's default table (rest/table.go):
# NAME and CREATED AT (an RFC3339 timestamp), not AGE.
_DEFAULT_COLUMNS = (_NAME, ("Created At", _AGE[1], "date"))


def _column(spec: tuple) -> dict:
    name, description, type_, priority = spec + ("string", 0)[len(spec) - 2:]
    return {"name": name, "type": type_, "format": "name" if name == "Name" else "",
            "description": description, "priority": priority}


# ---------------------------------------------------------------------------------------------
# Row printers: object -> cells, one per column above, in order.

Printer = Callable[[dict, datetime], list]


def _last_termination(status: dict) -> datetime | None:
    return parse_time(_d(_d(status.get("lastState")).get("terminated")).get("finishedAt"))


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None or (b is not None and b > a) else a


def _terminated_text(term: dict, prefix: str) -> str:
    if _s(term.get("reason")):
        return prefix + term["reason"]
    if _i(term.get("signal")):
        return f"{prefix}Signal:{_i(term.get('signal'))}"
    return f"{prefix}ExitCode:{_i(term.get('exitCode'))}"


def _condition_true(conditions: list[dict], ctype: Any) -> bool:
    """Whether the first condition of this type has status True."""
    return next((c.get("status") == "True" for c in conditions if c.get("type") == ctype), False)


def _pod_status_cells(pod: dict, now: datetime) -> tuple[str, str, str]:
    """READY, STATUS and RESTARTS, following the real printer's init/sidecar/reason rules."""
    spec, status = _d(pod.get("spec")), _d(pod.get("status"))
    # The real server always stores a phase (creation sets Pending), so treat a missing one so.
    phase = _s(status.get("phase")) or "Pending"
    reason = _s(status.get("reason")) or phase
    conditions = _dicts(status.get("conditions"))
    if any(c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated"
           for c in conditions):
        reason = "SchedulingGated"
    init_specs = _dicts(spec.get("initContainers"))
    # Init containers with restartPolicy Always are sidecars: counted as regular containers.
    sidecars = {_s(c.get("name")) for c in init_specs if c.get("restartPolicy") == "Always"}
    total = len(_l(spec.get("containers"))) + sum(
        c.get("restartPolicy") == "Always" for c in init_specs)
    ready = restarts = sidecar_restarts = 0
    last = sidecar_last = None
    initializing = False
    for i, cs in enumerate(_dicts(status.get("initContainerStatuses"))):
        count, finished = _i(cs.get("restartCount")), _last_termination(cs)
        restarts, last = restarts + count, _later(last, finished)
        sidecar = _s(cs.get("name")) in sidecars
        if sidecar:
            sidecar_restarts += count
            sidecar_last = _later(sidecar_last, finished)
        state = _d(cs.get("state"))
        term, wait = state.get("terminated"), _d(state.get("waiting"))
        if isinstance(term, dict) and _i(term.get("exitCode")) == 0:
            continue
        if sidecar and cs.get("started") is True:
            ready += 1 if cs.get("ready") is True else 0
            continue
        if isinstance(term, dict):
            reason = _terminated_text(term, "Init:")
        elif _s(wait.get("reason")) and wait["reason"] != "PodInitializing":
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break
    if not initializing or _condition_true(conditions, "Initialized"):
        restarts, last, has_running = sidecar_restarts, sidecar_last, False
        # Reverse order so that the first container's state wins, as in the real printer.
        for cs in reversed(_dicts(status.get("containerStatuses"))):
            restarts += _i(cs.get("restartCount"))
            last = _later(last, _last_termination(cs))
            state = _d(cs.get("state"))
            term, wait = state.get("terminated"), _d(state.get("waiting"))
            if _s(wait.get("reason")):
                reason = wait["reason"]
            elif isinstance(term, dict):
                reason = _terminated_text(term, "")
            elif cs.get("ready") is True and isinstance(state.get("running"), dict):
                has_running, ready = True, ready + 1
        if reason == "Completed" and has_running:
            pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in conditions)
            reason = "Running" if pod_ready else "NotReady"
    if _d(pod.get("metadata")).get("deletionTimestamp"):
        if _s(status.get("reason")) == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"
    restarts_text = str(restarts)
    if restarts and last is not None:
        restarts_text = f"{restarts} ({_since(last, now)} ago)"
    return f"{ready}/{total}", reason, restarts_text


def _pod(pod: dict, now: datetime) -> list:
    spec, status = _d(pod.get("spec")), _d(pod.get("status"))
    ready, reason, restarts = _pod_status_cells(pod, now)
    pod_ips = _dicts(status.get("podIPs"))
    # Conversion to the internal type fills podIPs from podIP, so fall back to it.
    ip = (_s(pod_ips[0].get("ip")) if pod_ips else _s(status.get("podIP"))) or "<none>"
    gates = _dicts(spec.get("readinessGates"))
    gates_text = "<none>"
    if gates:
        conditions = _dicts(status.get("conditions"))
        satisfied = sum(1 for g in gates if _condition_true(conditions, g.get("conditionType")))
        gates_text = f"{satisfied}/{len(gates)}"
    return [_name(pod), ready, reason, restarts, _age(pod, now), ip,
            _s(spec.get("nodeName")) or "<none>",
            _s(status.get("nominatedNodeName")) or "<none>", gates_text]


# Row conditions the real pod printer attaches to finished pods (phase -> message).
_POD_DONE = {"Succeeded": "The pod has completed successfully.", "Failed": "The pod failed."}


def _pod_conditions(pod: dict) -> list[dict] | None:
    phase = _s(_d(pod.get("status")).get("phase"))
    if phase not in _POD_DONE:
        return None
    return [{"type": "Completed", "status": "True", "reason": phase, "message": _POD_DONE[phase]}]


def _node(node: dict, now: datetime) -> list:
    status = _d(node.get("status"))
    info = _d(status.get("nodeInfo"))
    ready = None
    for cond in _dicts(status.get("conditions")):
        if cond.get("type") == "Ready":
            ready = cond  # the last Ready condition wins, as with the real printer's map
    states = ["Unknown"] if ready is None else (
        ["Ready"] if ready.get("status") == "True" else ["NotReady"])
    if _d(node.get("spec")).get("unschedulable") is True:
        states.append("SchedulingDisabled")
    roles: set[str] = set()
    prefix = "node-role.kubernetes.io/"
    for key, value in _d(_d(node.get("metadata")).get("labels")).items():
        if key.startswith(prefix):
            if key[len(prefix):]:
                roles.add(key[len(prefix):])
        elif key == "kubernetes.io/role" and _s(value):
            roles.add(value)
    addresses = _dicts(status.get("addresses"))

    def address(kind: str) -> str:
        return next((_s(a.get("address")) for a in addresses if a.get("type") == kind), "<none>")

    return [_name(node), ",".join(states), ",".join(sorted(roles)) or "<none>", _age(node, now),
            _s(info.get("kubeletVersion")), address("InternalIP"), address("ExternalIP"),
            _s(info.get("osImage")) or "<unknown>", _s(info.get("kernelVersion")) or "<unknown>",
            _s(info.get("containerRuntimeVersion")) or "<unknown>"]


def _service_external_ip(svc_type: str, spec: dict, status: dict) -> str:
    external = _strs(spec.get("externalIPs"))
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if svc_type == "LoadBalancer":
        ingress = _dicts(_d(status.get("loadBalancer")).get("ingress"))
        # The server prints wide, so kubectl's 16-character clipping never applies here.
        lb = sorted({_s(i.get("ip")) or _s(i.get("hostname")) for i in ingress} - {""})
        if external:
            return ",".join(lb + external)
        return ",".join(lb) if lb else "<pending>"
    if svc_type == "ExternalName":
        return _s(spec.get("externalName"))
    return "<unknown>"


def _service(svc: dict, now: datetime) -> list:
    spec, status = _d(svc.get("spec")), _d(svc.get("status"))
    svc_type = _s(spec.get("type")) or "ClusterIP"  # the server defaults type on create
    # Defaulting fills clusterIPs from clusterIP, so fall back to it for older stored objects.
    cluster_ips = _strs(spec.get("clusterIPs")) or [_s(spec.get("clusterIP"))]
    ports = []
    for p in _dicts(spec.get("ports")):
        proto = _s(p.get("protocol")) or "TCP"
        node_port = _i(p.get("nodePort"))
        ports.append(f"{_i(p.get('port'))}:{node_port}/{proto}" if node_port > 0
                     else f"{_i(p.get('port'))}/{proto}")
    return [_name(svc), svc_type, cluster_ips[0] or "<none>",
            _service_external_ip(svc_type, spec, status), ",".join(ports) or "<none>",
            _age(svc, now), format_labels(spec.get("selector"))]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # net.JoinHostPort


def _endpoints(ep: dict, now: datetime) -> list:
    subsets = _dicts(ep.get("subsets"))
    if not subsets:
        return [_name(ep), "<none>", _age(ep, now)]
    shown: list[str] = []
    more, count, limit = False, 0, 3
    for subset in subsets:
        ips = [_s(a.get("ip")) for a in _dicts(subset.get("addresses"))]
        # Headless services may have no ports: then bare IPs are listed.
        targets = [(ips, None)] if not _dicts(subset.get("ports")) else [
            (ips, _i(p.get("port"))) for p in _dicts(subset.get("ports"))]
        for addrs, port in targets:
            count += len(addrs)
            for ip in addrs:
                if len(shown) == limit:
                    more = True
                    break
                shown.append(ip if port is None else _host_port(ip, port))
    text = ",".join(shown)
    return [_name(ep), f"{text} + {count - limit} more..." if more else text, _age(ep, now)]


def _list_with_more(items: list[str], limit: int = 3) -> str:
    text = ",".join(items[:limit])
    if len(items) > limit:
        return f"{text} + {len(items) - limit} more..."
    return text or "<unset>"


def _endpoint_slice(eps: dict, now: datetime) -> list:
    ports = []
    for p in _dicts(eps.get("ports")):
        port, name = p.get("port"), p.get("name")
        ports.append(str(_i(port)) if isinstance(port, int) and not isinstance(port, bool)
                     else name if isinstance(name, str) else "*")
    addresses = [a for e in _dicts(eps.get("endpoints")) for a in _strs(e.get("addresses"))]
    return [_name(eps), _s(eps.get("addressType")), _list_with_more(ports),
            _list_with_more(addresses), _age(eps, now)]


def _event(ev: dict, now: datetime) -> list:
    # Events from the events.k8s.io API only carry eventTime (a MicroTime).
    first_ts = parse_time(ev.get("firstTimestamp")) or parse_time(ev.get("eventTime"))
    first = _since(first_ts, now)
    last_ts = parse_time(ev.get("lastTimestamp"))
    last = first if last_ts is None else _since(last_ts, now)
    count = _i(ev.get("count"))
    series = ev.get("series")
    if isinstance(series, dict):
        last = _since(parse_time(series.get("lastObservedTime")), now)
        count = _i(series.get("count"))
    elif count == 0:
        count = 1  # singleton events have no count in the new API
    involved = _d(ev.get("involvedObject"))
    kind, name = _s(involved.get("kind")).lower(), _s(involved.get("name"))
    source = _d(ev.get("source"))
    component = _s(source.get("component")) or _s(ev.get("reportingComponent"))
    instance = _s(source.get("host")) or _s(ev.get("reportingInstance"))
    return [last, _s(ev.get("type")), _s(ev.get("reason")), f"{kind}/{name}" if name else kind,
            _s(involved.get("fieldPath")), f"{component}, {instance}" if instance else component,
            _s(ev.get("message")).strip(), first, count, _name(ev)]


def _containers(template_spec: dict) -> tuple[str, str]:
    containers = _dicts(template_spec.get("containers"))
    return (",".join(_s(c.get("name")) for c in containers),
            ",".join(_s(c.get("image")) for c in containers))


def _daemon_set(ds: dict, now: datetime) -> list:
    spec, status = _d(ds.get("spec")), _d(ds.get("status"))
    pod_spec = _d(_d(spec.get("template")).get("spec"))
    names, images = _containers(pod_spec)
    return [_name(ds), _i(status.get("desiredNumberScheduled")),
            _i(status.get("currentNumberScheduled")), _i(status.get("numberReady")),
            _i(status.get("updatedNumberScheduled")), _i(status.get("numberAvailable")),
            format_labels(pod_spec.get("nodeSelector")), _age(ds, now), names, images,
            format_label_selector(spec.get("selector"))]


def _deployment(dep: dict, now: datetime) -> list:
    spec, status = _d(dep.get("spec")), _d(dep.get("status"))
    # apps/v1 defaults replicas to 1, so an unset field means one desired pod.
    desired = 1 if spec.get("replicas") is None else _i(spec.get("replicas"))
    names, images = _containers(_d(_d(spec.get("template")).get("spec")))
    selector = selector_string(spec.get("selector"))
    return [_name(dep), f"{_i(status.get('readyReplicas'))}/{desired}",
            _i(status.get("updatedReplicas")), _i(status.get("availableReplicas")),
            _age(dep, now), names, images, "<invalid>" if selector is None else selector]


def _name(obj: dict) -> str:
    return _s(_d(obj.get("metadata")).get("name"))


def _simple(*cells: Callable[[dict], Any]) -> Printer:
    """A printer for NAME, <cells...>, AGE tables."""
    return lambda obj, now: [_name(obj), *(cell(obj) for cell in cells), _age(obj, now)]


# Keyed by (group, kind): a same-named kind of another group (events.k8s.io Event) has other
# field names and must not borrow a printer.
_PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "Pod"): _pod,
    ("", "Node"): _node,
    ("", "Service"): _service,
    ("", "Endpoints"): _endpoints,
    ("discovery.k8s.io", "EndpointSlice"): _endpoint_slice,
    # The namespace strategy sets phase Active on create, so a missing phase reads as Active.
    ("", "Namespace"): _simple(lambda ns: _s(_d(ns.get("status")).get("phase")) or "Active"),
    ("", "ConfigMap"): _simple(lambda cm: len(_d(cm.get("data"))) + len(_d(cm.get("binaryData")))),
    ("", "Event"): _event,
    # podSelector is not a pointer: missing means the empty selector (all pods).
    ("networking.k8s.io", "NetworkPolicy"): _simple(
        lambda np: format_label_selector(_d(_d(np.get("spec")).get("podSelector")))),
    ("apps", "DaemonSet"): _daemon_set,
    ("apps", "Deployment"): _deployment,
    ("coordination.k8s.io", "Lease"): _simple(
        lambda lease: _s(_d(lease.get("spec")).get("holderIdentity"))),
}


def _default_row(obj: dict, now: datetime) -> list:
    created = parse_time(_d(obj.get("metadata")).get("creationTimestamp"))
    stamp = "0001-01-01T00:00:00Z"  # Go formats its zero time when the field is unset
    if created is not None:
        try:
            utc = created.astimezone(timezone.utc).replace(tzinfo=None)
            stamp = utc.isoformat(timespec="seconds") + "Z"
        except OverflowError:
            pass
    return [_name(obj), stamp]


# ---------------------------------------------------------------------------------------------
# Table assembly.


def _row_object(obj: dict, rt: ResourceType, include_object: str, group_version: str) -> Any:
    if include_object == "None":
        return None  # a nil RawExtension serializes as null
    if include_object == "Object":
        return {"apiVersion": rt.api_version, "kind": rt.kind, **obj}
    return {"kind": "PartialObjectMetadata", "apiVersion": group_version,
            "metadata": dict(_d(obj.get("metadata")))}


def _table_metadata(list_meta: dict | None) -> dict:
    # ListMeta fields are all omitempty.
    meta = _d(list_meta)
    out: dict[str, Any] = {k: meta[k] for k in ("resourceVersion", "continue") if _s(meta.get(k))}
    if _i(meta.get("remainingItemCount")):
        out["remainingItemCount"] = meta["remainingItemCount"]
    return out


def table_for(rt: ResourceType, objects: list[dict], *, include_object: str = "Metadata",
              list_meta: dict | None = None, now: datetime | None = None,
              no_headers: bool = False, group_version: str = TABLE_GROUP_VERSION) -> dict:
    """A Table for `objects` of resource `rt`.

    include_object: the `includeObject` query parameter ("None", "Metadata" (default; "" too),
    "Object"); anything else raises ValueError, which the server answers with 400 BadRequest.
    list_meta: the list's metadata (resourceVersion, continue, remainingItemCount).
    no_headers: the TableOptions `noHeaders` flag. On a watch the real server sends column
    definitions with the first event only and sets it for every later one; columnDefinitions is
    then null (a nil slice), rows keep all their cells.
    group_version: meta.k8s.io/v1 or meta.k8s.io/v1beta1, as negotiated from Accept.
    """
    if include_object == "":
        include_object = "Metadata"
    if include_object not in INCLUDE_OBJECT_VALUES:
        raise ValueError(f'unrecognized includeObject value: "{include_object}"')
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    printer = _PRINTERS.get((rt.group, rt.kind))
    columns = _COLUMNS[rt.kind] if printer else _DEFAULT_COLUMNS
    printer = printer or _default_row
    rows = []
    for obj in objects:
        obj = _d(obj)
        row: dict[str, Any] = {"cells": printer(obj, now)}
        conditions = _pod_conditions(obj) if printer is _pod else None
        if conditions:
            row["conditions"] = conditions
        row["object"] = _row_object(obj, rt, include_object, group_version)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": group_version,
        "metadata": _table_metadata(list_meta),
        "columnDefinitions": None if no_headers else [_column(c) for c in columns],
        "rows": rows,
    }


def table_for_object(rt: ResourceType, obj: dict, **kwargs: Any) -> dict:
    """A one-row Table for a GET or a watch event: like the real server, the table's
    resourceVersion is the object's."""
    rv = _s(_d(_d(obj).get("metadata")).get("resourceVersion"))
    kwargs.setdefault("list_meta", {"resourceVersion": rv} if rv else None)
    return table_for(rt, [obj], **kwargs)
