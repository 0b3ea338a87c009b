"""Topology files: what `netplane up` builds, loaded and checked before anything is created.

A topology file (format and examples: topologies/README.md) names the cluster, its nodes and
external hosts, the address plan (underlay, pod and service CIDRs), the CNI and proxy choice, and
ordinary Kubernetes objects to apply once the cluster is up. `load_topology` turns it into a frozen
`Topology` or raises `TopologyError`, whose message always reads `file:line: field.path: message`:
a sandbox that fails half-way through `up` costs far more than a precise error up front, so every
check that can be made on paper is made here, and nothing here touches the system except reading
the topology file and the manifest files it names.

The YAML is composed into nodes (not loaded straight to Python) so every value keeps its line;
aliases are refused while composing, before they can expand.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from netplane.apiserver.validation_names import (
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_value_errors,
    qualified_name_errors,
)
from netplane.sandbox.names import CLUSTER_NAME
from netplane.sandbox.addressing import UnderlayPlan, plan_underlay
from netplane.errors import ConfigError

DEFAULT_NAME = "np"
DEFAULT_UNDERLAY_SUBNET = "172.30.0.0/24"
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_NODE_CIDR_MASK = 24
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_DNS_IP = "10.96.0.10"
# Until netplane's own CNI and DNS land, the sandbox stands on Debian's reference plugins and
# runs without cluster DNS (issue 3); those issues flip these defaults.
DEFAULT_CNI = "netplane"
DEFAULT_PROXY = "none"
DEFAULT_DNS = False

CNI_CHOICES = ("bridge", "netplane")
# "agent": the iptables proxy hosted in each node's netplane agent (`netplane agent --proxy
# iptables`, one DaemonSet on kind); "iptables": a separate `netplane proxy` per node.
PROXY_CHOICES = ("none", "iptables", "agent", "ebpf")
MTU_MIN, MTU_MAX = 576, 9000  # IPv4's minimum datagram size; common jumbo-frame ceiling
MAX_NAME_LEN = 12  # node and host names end up in interface names (IFNAMSIZ: 15 characters)
MAX_NODES = 1000  # a sandbox lives on one machine; also bounds the list `nodes: N` expands to
ZONE_LABEL = "topology.kubernetes.io/zone"

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_TOP_FIELDS = ("name", "nodes", "hosts", "network", "cni", "proxy", "dns", "manifests",
               "manifestFiles")
_NODE_FIELDS = ("name", "zone", "labels")
_HOST_FIELDS = ("name", "address", "role")
_NETWORK_FIELDS = ("underlay", "clusterCIDR", "nodeCIDRMaskSize", "serviceCIDR", "clusterDomain",
                   "dnsIP")
_UNDERLAY_FIELDS = ("subnet", "mtu")

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null"))

FieldPath = tuple[str | int, ...]  # a field path: ("nodes", 1, "name") is nodes[1].name


class TopologyError(ConfigError):
    """A bad topology (or manifest) file: `source:line: field: problem`.

    `line` is None when the value has no position (defaults, `Topology.from_dict`, a file that
    cannot be read); `field` is "" for problems of the file itself (YAML syntax, aliases at top).
    """

    def __init__(self, source: str, line: int | None, field: str, problem: str):
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    zone: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def node_labels(self) -> dict[str, str]:
        """Labels for the Node object: the listed ones plus the well-known zone label."""
        return {**self.labels, ZONE_LABEL: self.zone} if self.zone else dict(self.labels)


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str | None = None  # None: the next free underlay address (Topology.underlay_plan)
    role: str | None = None


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[NodeSpec, ...]
    hosts: tuple[HostSpec, ...] = ()
    underlay_subnet: str = DEFAULT_UNDERLAY_SUBNET
    underlay_mtu: int = DEFAULT_UNDERLAY_MTU
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    node_cidr_mask: int = DEFAULT_NODE_CIDR_MASK
    service_cidr: str = DEFAULT_SERVICE_CIDR
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    dns_ip: str = DEFAULT_DNS_IP
    dns: bool = DEFAULT_DNS
    cni: str = DEFAULT_CNI
    proxy: str = DEFAULT_PROXY
    manifests: tuple[dict[str, Any], ...] = ()
    source: str = "<topology>"

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    # The underlay address plan, as network.plan_underlay hands it out (kind's order): .1 the
    # bridge, which is also the control-plane address nodes reach the apiserver on, then the
    # nodes in order, then hosts without an explicit address on the next free addresses. The
    # loader rejects host addresses in the gateway/node range, so node addresses never move.

    @property
    def underlay_plan(self) -> UnderlayPlan:
        return plan_underlay(self.underlay_subnet, self.underlay_mtu, self.node_names,
                             [(h.name, h.address) for h in self.hosts])

    def renamed(self, name: str, *, source: str = "--name") -> Topology:
        """The same topology under another cluster name (`netplane up --name`), checked."""
        if problem := cluster_name_problem(name):
            raise TopologyError(source, None, "name", problem)
        return replace(self, name=name)

    def to_dict(self) -> dict[str, Any]:
        """The topology in its file format (manifests inlined) plus `source`: for state.json.

        Feeding it back through `from_dict` gives an equal Topology; without `source`, it is a
        valid topology file as well.
        """
        return {
            "name": self.name,
            "nodes": [_drop_none({"name": n.name, "zone": n.zone,
                                  "labels": dict(n.labels) or None}) for n in self.nodes],
            "hosts": [_drop_none({"name": h.name, "address": h.address, "role": h.role})
                      for h in self.hosts],
            "network": {
                "underlay": {"subnet": self.underlay_subnet, "mtu": self.underlay_mtu},
                "clusterCIDR": self.cluster_cidr,
                "nodeCIDRMaskSize": self.node_cidr_mask,
                "serviceCIDR": self.service_cidr,
                "clusterDomain": self.cluster_domain,
                "dnsIP": self.dns_ip,
            },
            "cni": self.cni,
            "proxy": self.proxy,
            "dns": self.dns,
            "manifests": copy.deepcopy(list(self.manifests)),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Topology:
        """Rebuild from `to_dict` output (or any dict in the file format), with the same checks
        as a file; errors carry no line numbers."""
        body = copy.deepcopy(dict(data))  # the Topology must not share manifests with the caller
        recorded = body.pop("source", None)
        src = source or (recorded if isinstance(recorded, str) and recorded else "<dict>")
        return _build(body, _Doc(src, {}), Path(src).parent)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --- entry point -------------------------------------------------------------------------------


def load_topology(source: str | Path, *, text: str | None = None) -> Topology:
    """Load and check a topology file. With `text`, parse that instead of reading `source`
    (which still names the file in messages and anchors relative manifestFiles)."""
    src = str(source)
    if text is None:
        text = _read(src, None)
    data, lines = _parse_single(text, src)
    return _build(data, _Doc(src, lines), Path(src).parent)


def cluster_name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"must be a string, not {_kind(name)}"
    if not CLUSTER_NAME.fullmatch(name):
        return (f"invalid cluster name {_q(name)}: must be 1 to 8 characters of [a-z0-9] (it "
                f"prefixes every namespace and interface name the cluster makes, np-<name>-...)")
    return None


def _read(path: str, where: tuple[_Doc, FieldPath] | None) -> str:
    """Read a file; a failure is reported at `where` (the field naming the file) if given."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = f"file not found: {path}"
    except IsADirectoryError:
        problem = f"is a directory, not a file: {path}"
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text: {path}: {exc.reason} at byte {exc.start}"
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
    if where is None:
        raise TopologyError(path, None, "", problem)
    where[0].fail(where[1], problem)


# --- YAML with positions -----------------------------------------------------------------------


class _AliasFound(Exception):
    def __init__(self, path: FieldPath, anchor: str, mark: Any):
        super().__init__(anchor)
        self.path, self.anchor, self.mark = path, anchor, mark


class _Loader(yaml.SafeLoader):  # the pure-Python loader: the C one cannot be hooked per node
    """Composes without aliases and knows the field path of the node being composed, so an
    alias is refused (before it expands: the "billion laughs" bomb) with a useful location."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._paths: list[FieldPath] = []

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        path = self._child_path(parent, index)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasFound(path, event.anchor, event.start_mark)
        self._paths.append(path)
        try:
            return super().compose_node(parent, index)
        finally:
            self._paths.pop()

    def _child_path(self, parent: Any, index: Any) -> FieldPath:
        if parent is None or not self._paths:
            return ()
        base = self._paths[-1]
        if isinstance(index, int):
            return (*base, index)
        if isinstance(index, yaml.ScalarNode):
            return (*base, index.value)
        return base  # a mapping key (index None) or a complex key: report at the mapping


_LineMap = dict[FieldPath, int]  # field path -> line (1-based) in one file


def _parse_single(text: str, source: str) -> tuple[Any, _LineMap]:
    """The one document of a topology file, as plain data, and the line of each field."""
    lines: _LineMap = {}
    docs = _documents(text, source, (), lines)
    try:
        first = next(docs, None)
        extra = next(docs, None) if first is not None else None
    finally:
        docs.close()
    if first is None or first[1] is None:
        raise TopologyError(source, 1, "", "the file is empty; a topology needs at least "
                            "`nodes:` (see topologies/README.md)")
    if extra is not None:
        raise TopologyError(source, extra[0], "", "a topology file holds one YAML document; "
                            "this is a second one (put further Kubernetes objects in "
                            "`manifests` or in a file listed in `manifestFiles`)")
    return first[1], lines


def _documents(text: str, source: str, prefix: FieldPath,
               lines: _LineMap) -> Iterator[tuple[int, Any]]:
    """(start line, plain data) per YAML document; an empty document gives data None.

    Each field's line goes to `lines`, keyed by its field path: prefix + (document index,) +
    path inside the document for a manifest file (prefix non-empty), the bare path otherwise.
    """
    loader = _Loader(text)
    index = 0
    base: FieldPath = ()
    try:
        while loader.check_node():
            base = (*prefix, index) if prefix else ()
            start = loader.peek_event().start_mark.line + 1
            node = loader.get_node()
            if node is not None:
                lines[base] = node.start_mark.line + 1
            yield start, None if node is None else _plain(node, base, lines, source)
            index += 1
    except _AliasFound as exc:
        raise TopologyError(source, exc.mark.line + 1, _fmt((*base, *exc.path)),
                            f"YAML alias *{exc.anchor} is not accepted: topology files do not "
                            "need aliases, and aliases make YAML bombs possible") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = f"{exc.context}: {exc.problem}" if exc.context else str(exc.problem)
        raise TopologyError(source, mark.line + 1 if mark else None, "",
                            f"invalid YAML: {detail}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(source, None, "", f"invalid YAML: {exc}") from None
    except RecursionError:  # the composer recurses per level: [[[[... thousands deep
        raise TopologyError(source, None, "", "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _plain(node: Any, path: FieldPath, lines: _LineMap, source: str) -> Any:
    """A composed node as JSON-shaped Python data, recording each field's line on the way."""

    def fail(at: Any, problem: str) -> NoReturn:
        raise TopologyError(source, at.start_mark.line + 1, _fmt(path), problem)

    if isinstance(node, yaml.ScalarNode):
        if node.tag == _TAG + "timestamp":
            return node.value  # Kubernetes objects are JSON: a date is just a string there
        if node.tag not in _SCALAR_TAGS:
            fail(node, f"unsupported YAML tag {node.tag}")
        return _construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _TAG + "seq":
            fail(node, f"unsupported YAML tag {node.tag}")
        out: list[Any] = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            out.append(_plain(item, (*path, i), lines, source))
        return out
    if node.tag != _TAG + "map":
        fail(node, f"unsupported YAML tag {node.tag}")
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _TAG + "merge":
            fail(key_node, "YAML merge keys (<<) are not accepted")
        key = _plain(key_node, path, lines, source)
        if not isinstance(key, str):
            fail(key_node, f"keys must be strings, not {_kind(key)} {json.dumps(key)} (quote it)")
        key_path = (*path, key)
        if key in result:
            raise TopologyError(source, key_node.start_mark.line + 1, _fmt(key_path),
                                f"duplicate key (first on line {lines[key_path]})")
        lines[key_path] = key_node.start_mark.line + 1
        result[key] = _plain(value_node, key_path, lines, source)
    return result


def _construct_scalar(node: Any) -> Any:
    # A bare SafeConstructor resolves int/float/bool/null exactly as yaml.safe_load would.
    return yaml.constructor.SafeConstructor().construct_object(node)


# --- error positions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Doc:
    """Where values came from: the file name for messages and the line of each field path."""

    source: str
    lines: Mapping[FieldPath, int]

    def line(self, path: FieldPath) -> int | None:
        # A missing field has no line of its own: report at the nearest enclosing one.
        for n in range(len(path), -1, -1):
            if (found := self.lines.get(path[:n])) is not None:
                return found
        return None

    def fail(self, path: FieldPath, problem: str) -> NoReturn:
        raise TopologyError(self.source, self.line(path), _fmt(path), problem)

    def at(self, path: FieldPath) -> str:
        """`file:line field` for "first seen at" remarks."""
        line = self.line(path)
        return f"{self.source}:{line} {_fmt(path)}" if line else f"{self.source} {_fmt(path)}"


def _fmt(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"  # label keys like topology.kubernetes.io/zone
    return out


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --- field checkers ----------------------------------------------------------------------------


def _mapping(doc: _Doc, path: FieldPath, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        doc.fail(path, f"must be a mapping, not {_kind(value)}")
    for key in value:
        if key not in allowed:
            doc.fail((*path, key), f"unknown field {_q(key)} (allowed: {', '.join(allowed)})")
    return value


def _string(doc: _Doc, path: FieldPath, value: Any) -> str:
    if not isinstance(value, str):
        doc.fail(path, f"must be a string, not {_kind(value)}")
    if not value:
        doc.fail(path, "must not be empty")
    return value


def _int(doc: _Doc, path: FieldPath, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        doc.fail(path, f"must be an integer, not {_kind(value)}")
    if not lo <= value <= hi:
        doc.fail(path, f"{value} is out of range: must be between {lo} and {hi}")
    return value


def _bool(doc: _Doc, path: FieldPath, value: Any) -> bool:
    if not isinstance(value, bool):
        doc.fail(path, f"must be true or false, not {_kind(value)}")
    return value


def _choice(doc: _Doc, path: FieldPath, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        doc.fail(path, f"must be a string (one of: {', '.join(choices)}), not {_kind(value)}")
    if value not in choices:
        doc.fail(path, f"unknown value {_q(value)} (one of: {', '.join(choices)})")
    return value


def _list(doc: _Doc, path: FieldPath, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        doc.fail(path, f"must be a list, not {_kind(value)}")
    return value


def _short_name(doc: _Doc, path: FieldPath, value: Any, what: str) -> str:
    name = _string(doc, path, value)
    if errs := dns1123_label_errors(name):
        doc.fail(path, f"invalid {what} name {_q(name)}: {'; '.join(errs)}")
    if len(name) > MAX_NAME_LEN:
        doc.fail(path, f"{what} name {_q(name)} is {len(name)} characters, at most "
                       f"{MAX_NAME_LEN} allowed: it becomes part of network interface names, "
                       f"which Linux limits to 15 characters")
    return name


# --- the topology ------------------------------------------------------------------------------


def _build(data: Any, doc: _Doc, base_dir: Path) -> Topology:
    if not isinstance(data, dict):
        doc.fail((), f"the top level must be a mapping of topology fields, not {_kind(data)}")
    top = _mapping(doc, (), data, _TOP_FIELDS)
    name = DEFAULT_NAME if top.get("name") is None else top["name"]
    if problem := cluster_name_problem(name):
        doc.fail(("name",), problem)
    nodes = _nodes(doc, top.get("nodes"))
    hosts = _hosts(doc, top.get("hosts"), {n.name for n in nodes})
    net = _network(doc, top.get("network"), len(nodes))
    _check_underlay(doc, net, nodes, hosts)
    cni = DEFAULT_CNI if top.get("cni") is None else _choice(doc, ("cni",), top["cni"], CNI_CHOICES)
    proxy = (DEFAULT_PROXY if top.get("proxy") is None
             else _choice(doc, ("proxy",), top["proxy"], PROXY_CHOICES))
    if proxy == "agent" and cni != "netplane":
        doc.fail(("proxy",), f"'agent' hosts the proxy in netplane's CNI agent, which cni: {cni} does "
                 "not run; use 'iptables' (a netplane proxy process per node)")
    dns = DEFAULT_DNS if top.get("dns") is None else _bool(doc, ("dns",), top["dns"])
    manifests = _all_manifests(doc, top, base_dir)
    return Topology(
        name=name, nodes=nodes, hosts=hosts,
        underlay_subnet=str(net.underlay), underlay_mtu=net.mtu,
        cluster_cidr=str(net.cluster), node_cidr_mask=net.node_mask,
        service_cidr=str(net.service), cluster_domain=net.domain, dns_ip=str(net.dns_ip),
        dns=dns, cni=cni, proxy=proxy, manifests=manifests, source=doc.source,
    )


def _nodes(doc: _Doc, value: Any) -> tuple[NodeSpec, ...]:
    path: FieldPath = ("nodes",)
    if value is None:
        doc.fail(path, "required: a node count (e.g. 2) or a list of {name, zone?, labels?}")
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        doc.fail(path, f"must be a node count or a list of {{name, zone?, labels?}}, "
                       f"not {_kind(value)}")
    if isinstance(value, int):
        count = _int(doc, path, value, 1, MAX_NODES)
        return tuple(NodeSpec(f"node{i}") for i in range(1, count + 1))
    if not value:
        doc.fail(path, "must list at least one node")
    if len(value) > MAX_NODES:
        doc.fail(path, f"{len(value)} nodes: at most {MAX_NODES} allowed")
    nodes: list[NodeSpec] = []
    first: dict[str, int] = {}
    for i, item in enumerate(value):
        spec = _node(doc, (*path, i), item)
        if spec.name in first:
            doc.fail((*path, i, "name"), f"duplicate node name {_q(spec.name)} (first at "
                                         f"nodes[{first[spec.name]}])")
        first[spec.name] = i
        nodes.append(spec)
    return tuple(nodes)


def _node(doc: _Doc, path: FieldPath, value: Any) -> NodeSpec:
    m = _mapping(doc, path, value, _NODE_FIELDS)
    if m.get("name") is None:
        doc.fail((*path, "name"), "required field is missing")
    name = _short_name(doc, (*path, "name"), m["name"], "node")
    zone = None
    if m.get("zone") is not None:
        zone = _string(doc, (*path, "zone"), m["zone"])
        if errs := label_value_errors(zone):
            doc.fail((*path, "zone"), f"invalid zone {_q(zone)} (it becomes the {ZONE_LABEL} "
                                      f"label): {'; '.join(errs)}")
    labels = _labels(doc, (*path, "labels"), m.get("labels"))
    if zone and labels.get(ZONE_LABEL, zone) != zone:
        doc.fail((*path, "labels", ZONE_LABEL),
                 f"{_q(labels[ZONE_LABEL])} contradicts zone {_q(zone)}; set one of them")
    return NodeSpec(name=name, zone=zone, labels=labels)


def _labels(doc: _Doc, path: FieldPath, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        doc.fail(path, f"must be a mapping of label keys to values, not {_kind(value)}")
    for key, val in value.items():
        if errs := qualified_name_errors(key):
            doc.fail((*path, key), f"invalid label key {_q(key)}: {'; '.join(errs)}")
        if not isinstance(val, str):
            doc.fail((*path, key), f"label values must be strings, not {_kind(val)} (quote it)")
        if errs := label_value_errors(val):
            doc.fail((*path, key), f"invalid label value {_q(val)}: {'; '.join(errs)}")
    return dict(value)


def _hosts(doc: _Doc, value: Any, node_names: set[str]) -> tuple[HostSpec, ...]:
    path: FieldPath = ("hosts",)
    hosts: list[HostSpec] = []
    first: dict[str, int] = {}
    for i, item in enumerate(_list(doc, path, value)):
        m = _mapping(doc, (*path, i), item, _HOST_FIELDS)
        if m.get("name") is None:
            doc.fail((*path, i, "name"), "required field is missing")
        name = _short_name(doc, (*path, i, "name"), m["name"], "host")
        if name in first:
            doc.fail((*path, i, "name"),
                     f"duplicate host name {_q(name)} (first at hosts[{first[name]}])")
        if name in node_names:
            # Separate namespaces would allow it, but `netplane exec`, logs and /etc/hosts
            # entries would then need the reader to know which one is meant.
            doc.fail((*path, i, "name"), f"host name {_q(name)} is also a node name")
        first[name] = i
        address = None
        if m.get("address") is not None:
            address = _string(doc, (*path, i, "address"), m["address"])
        role = None if m.get("role") is None else _string(doc, (*path, i, "role"), m["role"])
        hosts.append(HostSpec(name=name, address=address, role=role))
    return tuple(hosts)


# --- network -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Net:
    underlay: ipaddress.IPv4Network
    mtu: int
    cluster: ipaddress.IPv4Network
    node_mask: int
    service: ipaddress.IPv4Network
    domain: str
    dns_ip: ipaddress.IPv4Address


_UNDERLAY_PATH: FieldPath = ("network", "underlay", "subnet")
_CLUSTER_PATH: FieldPath = ("network", "clusterCIDR")
_MASK_PATH: FieldPath = ("network", "nodeCIDRMaskSize")
_SERVICE_PATH: FieldPath = ("network", "serviceCIDR")


def _network(doc: _Doc, value: Any, node_count: int) -> _Net:
    net = {} if value is None else _mapping(doc, ("network",), value, _NETWORK_FIELDS)
    ul = net.get("underlay")
    ul = {} if ul is None else _mapping(doc, ("network", "underlay"), ul, _UNDERLAY_FIELDS)

    def given(m: dict[str, Any], key: str, default: Any) -> Any:
        return default if m.get(key) is None else m[key]

    underlay = _cidr(doc, _UNDERLAY_PATH, given(ul, "subnet", DEFAULT_UNDERLAY_SUBNET))
    mtu = _int(doc, ("network", "underlay", "mtu"), given(ul, "mtu", DEFAULT_UNDERLAY_MTU),
               MTU_MIN, MTU_MAX)
    cluster = _cidr(doc, _CLUSTER_PATH, given(net, "clusterCIDR", DEFAULT_CLUSTER_CIDR))
    mask = _int(doc, _MASK_PATH, given(net, "nodeCIDRMaskSize", DEFAULT_NODE_CIDR_MASK), 1, 30)
    service = _cidr(doc, _SERVICE_PATH, given(net, "serviceCIDR", DEFAULT_SERVICE_CIDR))
    _check_node_subnets(doc, cluster, mask, node_count, "nodeCIDRMaskSize" in net)
    _check_service_size(doc, service)
    _check_disjoint(doc, [(_UNDERLAY_PATH, underlay, ul.get("subnet") is not None),
                          (_CLUSTER_PATH, cluster, net.get("clusterCIDR") is not None),
                          (_SERVICE_PATH, service, net.get("serviceCIDR") is not None)])
    domain = _string(doc, ("network", "clusterDomain"),
                     given(net, "clusterDomain", DEFAULT_CLUSTER_DOMAIN))
    if errs := dns1123_subdomain_errors(domain):
        doc.fail(("network", "clusterDomain"), f"invalid domain {_q(domain)}: {'; '.join(errs)}")
    dns_ip = _dns_ip(doc, net.get("dnsIP"), service)
    return _Net(underlay, mtu, cluster, mask, service, domain, dns_ip)


def _cidr(doc: _Doc, path: FieldPath, value: Any) -> ipaddress.IPv4Network:
    text = _string(doc, path, value)
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            doc.fail(path, f"{_q(text)} is not a CIDR (like 10.244.0.0/16)")
        doc.fail(path, f"{_q(text)} has host bits set (did you mean {loose}?)")
    if "/" not in text:
        doc.fail(path, f"{_q(text)} has no prefix length (like {text}/24)")
    if net.version != 4:
        doc.fail(path, f"{_q(text)}: the sandbox is IPv4-only for now")
    if net.is_loopback or net.is_multicast or net.is_reserved or net.is_unspecified:
        doc.fail(path, f"{_q(text)} is a loopback, multicast or reserved range")
    return net


def _check_node_subnets(doc: _Doc, cluster: ipaddress.IPv4Network, mask: int, nodes: int,
                        mask_given: bool) -> None:
    # Like kube-controller-manager's node IPAM: the cluster CIDR is cut into /mask node
    # subnets, one per node; the error goes to whichever of the two settings the file has.
    path = _MASK_PATH if mask_given else _CLUSTER_PATH
    if mask < cluster.prefixlen:
        doc.fail(path, f"node subnets of /{mask} do not fit in clusterCIDR {cluster} "
                       f"(nodeCIDRMaskSize must be at least {cluster.prefixlen})")
    available = 1 << (mask - cluster.prefixlen)
    if available < nodes:
        doc.fail(path, f"clusterCIDR {cluster} holds only {available} node subnet(s) of /{mask} "
                       f"for {nodes} nodes")


def _check_service_size(doc: _Doc, service: ipaddress.IPv4Network) -> None:
    # /12 is the apiserver's own limit; below /28 the kubernetes and DNS Services barely fit.
    if not 12 <= service.prefixlen <= 28:
        doc.fail(_SERVICE_PATH, f"{service}: the prefix length must be between 12 and 28")


def _check_disjoint(doc: _Doc, nets: list[tuple[FieldPath, ipaddress.IPv4Network, bool]]) -> None:
    """`nets`: (path, network, given in the file) for underlay, cluster and service range."""
    for i, (path_a, a, given_a) in enumerate(nets):
        for path_b, b, given_b in nets[i + 1:]:
            if not a.overlaps(b):
                continue
            # Report at a setting the file has: the defaults never overlap each other, so at
            # most one of the two can be a default.
            if given_b or not given_a:
                here, mine, other, theirs, other_given = path_b, b, path_a, a, given_a
            else:
                here, mine, other, theirs, other_given = path_a, a, path_b, b, given_b
            default = "" if other_given else ", the default"
            doc.fail(here, f"{mine} overlaps {_fmt(other)} ({theirs}{default}): the underlay, "
                           "pod and service ranges must not overlap")


def _dns_ip(doc: _Doc, value: Any, service: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    path: FieldPath = ("network", "dnsIP")
    if value is None:
        # kubeadm's choice: the tenth address of the service range (10.96.0.10 by default).
        return service.network_address + 10
    text = _string(doc, path, value)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        doc.fail(path, f"{_q(text)} is not an IP address")
    if ip.version != 4 or ip not in service:
        doc.fail(path, f"{ip} is outside serviceCIDR {service}")
    if ip in (service.network_address, service.broadcast_address):
        doc.fail(path, f"{ip} is the first or last address of serviceCIDR {service}, which "
                       "Services never get")
    if ip == service.network_address + 1:
        doc.fail(path, f"{ip} is the address of the `kubernetes` Service")
    return ip


def _check_underlay(doc: _Doc, net: _Net, nodes: tuple[NodeSpec, ...],
                    hosts: tuple[HostSpec, ...]) -> None:
    usable = max(net.underlay.num_addresses - 2, 0)  # network and broadcast address excluded
    need = len(nodes) + len(hosts) + 1
    if usable < need:
        doc.fail(_UNDERLAY_PATH,
                 f"{net.underlay} has {usable} usable addresses; {len(nodes)} node(s) + "
                 f"{len(hosts)} host(s) + the gateway need {need}")
    gateway = net.underlay[1]
    node_ips = {net.underlay[2 + i]: n.name for i, n in enumerate(nodes)}
    first: dict[ipaddress.IPv4Address, int] = {}
    for i, host in enumerate(hosts):
        if host.address is None:
            continue
        path: FieldPath = ("hosts", i, "address")
        try:
            ip = ipaddress.ip_address(host.address)
        except ValueError:
            doc.fail(path, f"{_q(host.address)} is not an IP address (give it without a prefix "
                           "length; the underlay subnet sets that)")
        if ip.version != 4 or ip not in net.underlay or ip in (net.underlay.network_address,
                                            net.underlay.broadcast_address):
            doc.fail(path, f"{ip} is not a usable address of the underlay {net.underlay}")
        if ip == gateway:
            doc.fail(path, f"{ip} is the underlay gateway address (the bridge, where nodes "
                           "reach the apiserver)")
        if ip in node_ips:
            doc.fail(path, f"{ip} is node {_q(node_ips[ip])}'s underlay address (nodes take "
                           f"{net.underlay[2]} onwards, in order)")
        if ip in first:
            doc.fail(path, f"{ip} is also the address of hosts[{first[ip]}]")
        first[ip] = i


# --- manifests ---------------------------------------------------------------------------------


def _all_manifests(doc: _Doc, top: dict[str, Any], base_dir: Path) -> tuple[dict[str, Any], ...]:
    """Inline manifests first, then each manifestFiles entry's documents, in order."""
    found: list[tuple[_Doc, FieldPath, dict[str, Any]]] = []
    for i, obj in enumerate(_list(doc, ("manifests",), top.get("manifests"))):
        found.append((doc, ("manifests", i), _manifest(doc, ("manifests", i), obj)))
    for i, entry in enumerate(_list(doc, ("manifestFiles",), top.get("manifestFiles"))):
        found.extend(_manifest_file(doc, ("manifestFiles", i), entry, base_dir))
    seen: dict[tuple[str, str, str, str], str] = {}
    for where, path, obj in found:
        key = _object_key(obj)
        if key in seen:
            ns = f"{key[2]}/" if key[2] else ""
            where.fail((*path, "metadata", "name"),
                       f"duplicate object {key[1]} {ns}{key[3]} (also at {seen[key]})")
        seen[key] = where.at(path)
    return tuple(obj for _, _, obj in found)


def _manifest_file(doc: _Doc, path: FieldPath, entry: Any,
                   base_dir: Path) -> list[tuple[_Doc, FieldPath, dict[str, Any]]]:
    rel = _string(doc, path, entry)
    file = Path(rel) if Path(rel).is_absolute() else base_dir / rel
    text = _read(str(file), (doc, path))
    lines: _LineMap = {}
    docs = list(_documents(text, str(file), path, lines))
    file_doc = _Doc(str(file), lines)
    out: list[tuple[_Doc, FieldPath, dict[str, Any]]] = []
    for index, (_, data) in enumerate(docs):
        if data is None:
            continue  # empty documents (a trailing ---) are skipped, as kubectl does
        out.append((file_doc, (*path, index), _manifest(file_doc, (*path, index), data)))
    return out


def _manifest(doc: _Doc, path: FieldPath, obj: Any) -> dict[str, Any]:
    """Only the shape every Kubernetes object has; the apiserver validates the rest on apply."""
    if not isinstance(obj, dict):
        doc.fail(path, f"must be a Kubernetes object (a mapping), not {_kind(obj)}")
    for key in ("apiVersion", "kind"):
        if obj.get(key) is None:
            doc.fail((*path, key), "required field is missing")
        _string(doc, (*path, key), obj[key])
    meta = obj.get("metadata")
    if meta is None:
        doc.fail((*path, "metadata"), "required field is missing (it needs at least a name)")
    if not isinstance(meta, dict):
        doc.fail((*path, "metadata"), f"must be a mapping, not {_kind(meta)}")
    if meta.get("name") is None:
        doc.fail((*path, "metadata", "name"), "required field is missing")
    _string(doc, (*path, "metadata", "name"), meta["name"])
    if meta.get("namespace") is not None:
        _string(doc, (*path, "metadata", "namespace"), meta["namespace"])
    return obj


def _object_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].rpartition("/")[0]  # v1 and apps/v1 objects never collide
    ns = obj["metadata"].get("namespace") or ""
    return group, obj["kind"], ns, obj["metadata"]["name"]
