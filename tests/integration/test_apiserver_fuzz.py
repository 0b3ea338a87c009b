"""Fuzz-style robustness of the embedded apiserver's HTTP layer, on 127.0.0.1 only.

An in-process `ApiServer` is seeded with a few objects of every kind; then hundreds of seeded
random malformed requests are sent: bad JSON/YAML (alias bombs, deep nesting), wrong kinds and
apiVersions, invalid names and IPs, wrong field types, huge bodies, bogus Content-Length, unknown
patch types, broken JSON patches, malformed selectors and list/watch parameters, unknown paths,
unsupported methods, random bytes as the request line, headers without a body and connections
that give up half-way. Every complete, well-formed request must be answered with a JSON `Status`
carrying a 4xx code (never a 5xx, never a dropped connection), the server must keep serving,
and a full dump of the state afterwards must be identical to the one before, resourceVersion
included.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from netplane.apiserver.main import ApiServer
from netplane.apiserver.resources import RESOURCES, ResourceType, lookup

SEED = 20240611
TIME_BUDGET = 30.0  # seconds for the whole fuzz run
NS = "fuzz"
MIB = 1024 * 1024

JSON = "application/json"
YAML = "application/yaml"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
SMP = "application/strategic-merge-patch+json"


def rpath(rt: ResourceType, ns: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    base = f"/api/{rt.version}" if not rt.group else f"/apis/{rt.group}/{rt.version}"
    if rt.namespaced and ns:
        base += f"/namespaces/{ns}"
    base += f"/{rt.plural}"
    if name is not None:
        base += f"/{name}"
    if sub is not None:
        base += f"/{sub}"
    return base


R = {rt.plural: rt for rt in RESOURCES}

# One valid object per kind (names filled in per use). Every one of these is accepted as is; the
# fuzz cases break exactly one thing about them.
VALID: dict[str, dict[str, Any]] = {
    "configmaps": {"metadata": {"labels": {"a": "b"}, "annotations": {"k": "v"}},
                   "data": {"k": "v"}, "binaryData": {"b": "AAAA"}},
    "pods": {"metadata": {"labels": {"app": "web"}},
             "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 5,
                      "containers": [{"name": "c", "image": "busybox",
                                      "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}],
                                      "env": [{"name": "A", "value": "b"}]}],
                      "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                      "nodeSelector": {"a": "b"}}},
    "services": {"metadata": {}, "spec": {
        "type": "NodePort", "selector": {"app": "web"}, "sessionAffinity": "None",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        "externalIPs": ["192.0.2.1"]}},
    "endpointslices": {"metadata": {"labels": {"kubernetes.io/service-name": "svc"}},
                       "addressType": "IPv4",
                       "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": True},
                                      "nodeName": "node-1",
                                      "targetRef": {"kind": "Pod", "name": "p", "namespace": NS}}],
                       "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    "endpoints": {"metadata": {}, "subsets": [{"addresses": [{"ip": "10.244.0.5", "nodeName": "node-1"}],
                                               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}]},
    "networkpolicies": {"metadata": {}, "spec": {
        "podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                              {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In",
                                                                     "values": ["b"]}]}}],
                     "ports": [{"port": 80, "protocol": "TCP"}]}],
        "egress": [{"to": [{"namespaceSelector": {}}]}]}},
    "nodes": {"metadata": {"labels": {"a": "b"}},
              "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                       "taints": [{"key": "k", "effect": "NoSchedule"}]},
              "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.1"}],
                         "conditions": [{"type": "Ready", "status": "True"}]}},
    "namespaces": {"metadata": {"labels": {"a": "b"}}},
    "deployments": {"metadata": {}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "x"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
        "template": {"metadata": {"labels": {"app": "x"}},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
    "daemonsets": {"metadata": {}, "spec": {
        "selector": {"matchLabels": {"app": "x"}},
        "template": {"metadata": {"labels": {"app": "x"}},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
    "leases": {"metadata": {}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                                        "leaseTransitions": 1}},
    "events": {"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": NS},
               "reason": "Started", "message": "m", "type": "Normal", "count": 1,
               "firstTimestamp": "2024-01-01T00:00:00Z", "source": {"component": "kubelet"}},
}

# Values of the wrong JSON type for a value of each type (the IntOrString fields are the one
# place where a string and an integer are both right, so they are left alone).
INT_OR_STRING = {"targetPort", "maxSurge", "maxUnavailable", "port"}


def wrong_types(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return ["yes", 1, [], {}]
    if isinstance(value, dict):
        return [[], "x", 1, True]
    if isinstance(value, list):
        return [{}, "x", 1, True]
    if isinstance(value, str):
        return [1, [], {"a": "b"}, True]
    if isinstance(value, int):
        return ["1", [], {}, True]
    return ["x"]


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def body_of(plural: str, name: str) -> dict[str, Any]:
    rt = R[plural]
    obj = copy.deepcopy(VALID[plural])
    obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
    obj["metadata"]["name"] = name
    return obj


def post_path(plural: str) -> str:
    rt = R[plural]
    return rpath(rt, NS if rt.namespaced else None)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- requests and responses -------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: int | tuple[int, ...] | None = None  # None: any 4xx

    def allows(self, code: int) -> bool:
        if not 400 <= code < 500:
            return False
        if self.expect is None:
            return True
        return code in ((self.expect,) if isinstance(self.expect, int) else self.expect)


@dataclass
class RawResponse:
    status: int | None  # None: no status line (connection closed before one)
    headers: dict[str, str]
    body: bytes


class RawReader:
    """HTTP responses read off a raw socket, one at a time (pipelined ones stay buffered)."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.buf = b""
        sock.settimeout(timeout)

    def _more(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return False  # a reset after the response arrived counts as the end of the stream
        self.buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes:
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> RawResponse:
        """One response (Content-Length or chunked body); status None when the connection ended
        before a status line and headers arrived."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                return RawResponse(None, {}, self._take(len(self.buf)))
        head = self._take(self.buf.index(b"\r\n\r\n") + 4)[:-4]
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            want = int(headers["content-length"])
            while len(self.buf) < want and self._more():
                pass
            return RawResponse(status, headers, self._take(want))
        while b"0\r\n\r\n" not in self.buf and self._more():
            pass
        end = self.buf.find(b"0\r\n\r\n")
        return RawResponse(status, headers, self._take(len(self.buf) if end < 0 else end + 5))


def read_raw_response(sock: socket.socket, timeout: float = 5.0) -> RawResponse:
    return RawReader(sock, timeout).response()


def assert_status_body(label: str, code: int, ctype: str, body: bytes) -> None:
    assert ctype.split(";")[0].strip() == "application/json", f"{label}: {code} with Content-Type {ctype!r}: {body[:200]!r}"
    doc = json.loads(body)
    assert doc.get("kind") == "Status" and doc.get("apiVersion") == "v1", f"{label}: not a Status: {doc}"
    assert doc.get("status") == "Failure" and doc.get("code") == code, f"{label}: {doc}"
    assert isinstance(doc.get("message"), str) and isinstance(doc.get("reason"), str), f"{label}: {doc}"


class Client:
    """One keep-alive http.client connection; reconnects only where the server said it closes."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=5)

    def send(self, case: Case) -> tuple[int, dict[str, str], bytes]:
        headers = {"Accept": JSON, **case.headers}
        if case.body is not None and "Content-Type" not in headers:
            headers["Content-Type"] = JSON
        try:
            self.conn.request(case.method, case.path, body=case.body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError) as e:
            self.conn.close()
            return 0, {}, f"connection failed: {e!r}".encode()  # 0: no answer (a failure)
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, hdrs, data

    def close(self) -> None:
        self.conn.close()


def raw_exchange(port: int, data: bytes, *, shut_write: bool = False, timeout: float = 5.0) -> RawResponse:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        return read_raw_response(s, timeout)


# -- the server, its seed objects and the state dump ----------------------------------------------------


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    errors = ErrorLog()
    logging.getLogger("netplane.apiserver").addHandler(errors)
    srv = ApiServer(listen=[("127.0.0.1", 0)], service_cidr="10.96.0.0/12", bookmark_interval=1.0).start()
    srv.errors = errors
    try:
        seed(srv)
        yield srv
    finally:
        srv.stop()
        logging.getLogger("netplane.apiserver").removeHandler(errors)


SEEDED = {plural: f"seed-{plural}" for plural in VALID}


def seed(srv: ApiServer) -> None:
    host, port = srv.servers[0].server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)

    def call(method: str, path: str, body: Any, ctype: str = JSON) -> dict[str, Any]:
        conn.request(method, path, body=dumps(body), headers={"Content-Type": ctype})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status in (200, 201), f"seeding {method} {path}: {resp.status} {data[:300]!r}"
        return json.loads(data)

    call("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    for plural in VALID:
        call("POST", post_path(plural), body_of(plural, SEEDED[plural]))
    pod = rpath(R["pods"], NS, SEEDED["pods"], "status")
    call("PATCH", pod, {"status": {"phase": "Running", "podIP": "10.244.0.5",
                                   "podIPs": [{"ip": "10.244.0.5"}], "hostIP": "192.168.1.1"}}, MERGE_PATCH)
    conn.close()


def dump(port: int) -> tuple[str, dict[tuple[str, str, str], Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    state: dict[tuple[str, str, str], Any] = {}
    versions = set()
    try:
        for rt in RESOURCES:
            conn.request("GET", rpath(rt), headers={"Accept": JSON})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, (rt.plural, resp.status, data[:200])
            doc = json.loads(data)
            versions.add(doc["metadata"]["resourceVersion"])
            for item in doc["items"]:
                m = item["metadata"]
                state[(rt.key, m.get("namespace", ""), m["name"])] = item
    finally:
        conn.close()
    assert len(versions) == 1, versions  # nothing changed while dumping
    return versions.pop(), state


# -- the malformed requests ------------------------------------------------------------------------------


BAD_NAMES = ["Upper", "UPPER", "a" * 254, "has/slash", "under_score", "-lead", "trail-", "dot..dot",
             "sp ace", "ünïcode", ".", "..", "a.-b", "tab\tname", "new\nline", "x" * 1000, "%2F", "a:b"]
BAD_SERVICE_NAMES = ["has.dot", "1starts-with-digit", "a" * 64]
BAD_IPS = ["999.0.0.1", "10.96.0.300", "abc", "10.96.0.1/32", "010.96.0.5", "1.2.3", "::zz",
           "10.96.0.1 ", " 10.96.0.1", "0x0a.0.0.1", "1.2.3.4.5", "256.256.256.256", "-1.0.0.0"]
BAD_LABEL_SELECTORS = ["a in (b", "a in b)", "(a)", "a=b)", "-a=b", "a=-b", "a b", "!", "!a=b", "a!b",
                       "x/y/z=1", "a" * 64, "a=" + "b" * 64, "a in (x y)", "a in ((x))", "a=b=c", ",a",
                       "a,,b", "Example.COM/a=b", "a in (x) b", "%=1", "a==b==c"]
BAD_FIELD_SELECTORS = ["spec.foo=1", "nonsense", "=x", "metadata.name", r"metadata.name=a\qb",
                       "metadata.name=a\\", "metadata.name=a=b", "status.bogus!=x", "metadata.labels=x"]
BAD_RVS = ["abc", "-5", "1.5", "0x10", "1e3", "+7", " 3", "३", "9" * 40 + "x", "--1"]
BAD_INTS = ["abc", "1.5", "0x10", "1e3", "", "∞", "--1", "1 2"]


def yaml_alias_bomb(levels: int = 9) -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"metadata: {{name: bomb}}\ndata: {{k: *a{levels - 1}}}")
    return "\n".join(lines).encode()


def build_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    plurals = list(VALID)

    # 1. Invalid and truncated JSON.
    for i in range(40):
        plural = rng.choice(plurals)
        valid = dumps(body_of(plural, f"trunc-{i}"))
        cut = valid[: rng.randrange(1, len(valid) - 1)]
        add(Case(f"truncated json {plural}", "POST", post_path(plural), cut, expect=400))
    garbage = [b"{", b"}", b"{'a': 1}", b"{\"metadata\": {\"name\": \"x\",}}", b"NaN", b"{\"a\": NaN}",
               b"\xff\xfe\x00", b"[1, 2", b"{\"a\" 1}", b"\x00" * 16, b"   ", b"{\"metadata\": }",
               b"{\"a\":\"\\ud800\"}", b"tru", b"nul", b"--", b"{\"a\":1}garbage", b"[" * 5000 + b"]" * 5000,
               b"{\"a\":" * 3000 + b"1" + b"}" * 3000]
    for g in garbage:
        for plural in rng.sample(plurals, 3):
            add(Case(f"invalid json {g[:20]!r}", "POST", post_path(plural), g, expect=400))
            add(Case(f"invalid json put {g[:20]!r}", "PUT", rpath(R[plural], NS, SEEDED[plural]), g, expect=400))
    for top in (b"[]", b"\"str\"", b"1", b"null", b"true", b"[{\"metadata\":{\"name\":\"x\"}}]"):
        plural = rng.choice(plurals)
        add(Case(f"non-object json {top!r}", "POST", post_path(plural), top, expect=400))
    # Deeply nested (but well-formed) JSON inside an otherwise fine object.
    for depth in (200, 600, 1000):
        nested = "{\"a\":" * depth + "1" + "}" * depth
        body = ('{"metadata":{"name":"deep-%d"},"data":{"k":"v"},"extra":%s}' % (depth, nested)).encode()
        add(Case(f"deep json {depth}", "POST", post_path("configmaps"), body))
        add(Case(f"deep json put {depth}", "PUT", rpath(R["configmaps"], NS, SEEDED["configmaps"]),
                 body.replace(b"deep-%d" % depth, SEEDED["configmaps"].encode())))

    # 2. YAML: alias bombs, deep nesting, tags, syntax errors.
    yamls = [yaml_alias_bomb(), yaml_alias_bomb(4), b"a: &x 1\nb: *x\nmetadata: {name: alias}\n",
             b"metadata: {name: [unclosed\n", b"metadata:\n\t- tab", b"!!python/object:os.system {}\n",
             b"- just\n- a list\n", b"plain scalar", b"[" * 3000 + b"]" * 3000,
             b"metadata: {name: y}\nkind: Pod\n", b"metadata: {name: Bad_Name}\n", b"\xff\xfe garbage",
             b"%YAML 9.9\n---\na: 1\n", b"a: 1\n---\nb: 2\n", b"? [a, b]\n: c\n"]
    for y in yamls:
        for plural in rng.sample(plurals, 3):
            add(Case(f"yaml {y[:24]!r}", "POST", post_path(plural), y, {"Content-Type": YAML}))

    # 3. Wrong kind / apiVersion / namespace / name.
    for plural in plurals:
        rt = R[plural]
        other = rng.choice([p for p in plurals if R[p].kind != rt.kind])
        b = body_of(plural, f"kind-{plural}")
        b["kind"] = R[other].kind
        add(Case(f"wrong kind {plural}", "POST", post_path(plural), dumps(b), expect=400))
        b = body_of(plural, f"kind-{plural}")
        b["apiVersion"] = rng.choice(["v2", "apps/v1beta1", "bogus/v1", "", "v1/extra"]) or "x/y"
        if b["apiVersion"] != rt.api_version:
            add(Case(f"wrong apiVersion {plural}", "POST", post_path(plural), dumps(b), expect=400))
        b = body_of(plural, f"kind-{plural}")
        b["kind"] = rng.choice([1, [], {"a": 1}, True])
        add(Case(f"kind of the wrong type {plural}", "POST", post_path(plural), dumps(b), expect=400))
        if rt.namespaced:
            b = body_of(plural, f"ns-{plural}")
            b["metadata"]["namespace"] = "kube-system"
            add(Case(f"namespace mismatch {plural}", "POST", post_path(plural), dumps(b), expect=400))
            add(Case(f"missing namespace {plural}", "POST", rpath(rt, "no-such-ns"),
                     dumps(body_of(plural, "x")), expect=404))
        b = body_of(plural, "other-name")
        add(Case(f"name mismatch {plural}", "PUT", rpath(rt, NS, SEEDED[plural]), dumps(b), expect=400))
        add(Case(f"update missing {plural}", "PUT", rpath(rt, NS, "does-not-exist"),
                 dumps(body_of(plural, "does-not-exist")), expect=404))
        add(Case(f"already exists {plural}", "POST", post_path(plural), dumps(body_of(plural, SEEDED[plural])),
                 expect=409))
        b = body_of(plural, "x")
        b["metadata"] = rng.choice([[], "x", 1])
        add(Case(f"metadata of the wrong type {plural}", "POST", post_path(plural), dumps(b), expect=400))

    # 4. Invalid names. (core/v1 Events skip ObjectMeta name rules upstream: not used here.)
    named = [p for p in plurals if p != "events"]
    for name in BAD_NAMES:
        plural = rng.choice(named)
        add(Case(f"bad name {name[:20]!r} {plural}", "POST", post_path(plural), dumps(body_of(plural, name)),
                 expect=422))
        if name == "trail-":
            continue  # "trail--" is a fine generateName ("trail--x2z4q" is a valid name)
        b = body_of(plural, "")
        b["metadata"]["generateName"] = name + "-" if name.isascii() and len(name) < 300 else name
        add(Case(f"bad generateName {name[:20]!r} {plural}", "POST", post_path(plural), dumps(b), expect=422))
    for name in BAD_SERVICE_NAMES:
        add(Case(f"bad service name {name[:20]}", "POST", post_path("services"), dumps(body_of("services", name)),
                 expect=422))
    b = body_of("configmaps", "")
    del b["metadata"]["name"]
    add(Case("no name", "POST", post_path("configmaps"), dumps(b), expect=422))

    # 5. Invalid IPs.
    for ip in BAD_IPS:
        svc = body_of("services", "bad-ip")
        svc["spec"]["clusterIP"] = ip
        add(Case(f"service clusterIP {ip!r}", "POST", post_path("services"), dumps(svc), expect=422))
        svc = body_of("services", "bad-ext")
        svc["spec"]["externalIPs"] = [ip]
        add(Case(f"service externalIP {ip!r}", "POST", post_path("services"), dumps(svc), expect=422))
        es = body_of("endpointslices", "bad-ip")
        es["endpoints"][0]["addresses"] = [ip]
        add(Case(f"endpointslice address {ip!r}", "POST", post_path("endpointslices"), dumps(es), expect=422))
        ep = body_of("endpoints", "bad-ip")
        ep["subsets"][0]["addresses"][0]["ip"] = ip
        add(Case(f"endpoints ip {ip!r}", "POST", post_path("endpoints"), dumps(ep), expect=422))
        status_path = rpath(R["pods"], NS, SEEDED["pods"], "status")
        add(Case(f"pod status podIP {ip!r}", "PATCH", status_path,
                 dumps({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}), {"Content-Type": MERGE_PATCH},
                 expect=422))
        add(Case(f"pod status hostIP {ip!r}", "PATCH", status_path,
                 dumps({"status": {"hostIP": ip}}), {"Content-Type": MERGE_PATCH}, expect=422))
        if "/" in ip:
            continue  # a fine CIDR
        np_ = body_of("networkpolicies", "bad-cidr")
        np_["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] = ip
        add(Case(f"networkpolicy cidr {ip!r}", "POST", post_path("networkpolicies"), dumps(np_), expect=422))
        node = body_of("nodes", "bad-cidr")
        node["spec"]["podCIDR"] = ip
        node["spec"]["podCIDRs"] = [ip]
        add(Case(f"node podCIDR {ip!r}", "POST", post_path("nodes"), dumps(node), expect=422))
    for ip in ("10.96.0.0", "10.111.255.255", "192.168.0.1", "fd00::1"):  # network, broadcast, outside
        svc = body_of("services", "edge-ip")
        svc["spec"]["clusterIP"] = ip
        add(Case(f"service clusterIP outside the range {ip}", "POST", post_path("services"), dumps(svc), expect=422))
    seeded_svc_ip_case = Case("service clusterIP in use", "POST", post_path("services"), None, expect=422)
    cases.append(seeded_svc_ip_case)  # the body is filled in once the seeded IP is known

    # 6. Wrong field types, one field at a time.
    mutations = []
    for plural in plurals:
        for p in paths(VALID[plural]):
            if p[-1] in INT_OR_STRING or p == ("metadata",):
                continue
            for bad in wrong_types(_get(VALID[plural], p)):
                mutations.append((plural, p, bad))
    for plural, p, bad in rng.sample(mutations, 220):
        b = body_of(plural, "typed")
        _set(b, p, bad)
        add(Case(f"wrong type {plural} {'.'.join(map(str, p))}={json.dumps(bad)}", "POST", post_path(plural),
                 dumps(b), expect=(400, 422)))
    for plural in plurals:  # the same through an update of the seeded object (whose status an
        # update of the main resource ignores, wrong or not: status is not among the paths)
        candidates = [(p, bad) for pl, p, bad in mutations if pl == plural and p[0] != "status"]
        for p, bad in rng.sample(candidates, 2):
            b = body_of(plural, SEEDED[plural])
            _set(b, p, bad)
            if p[:2] == ("metadata", "name"):
                continue
            add(Case(f"wrong type update {plural} {'.'.join(map(str, p))}", "PUT",
                     rpath(R[plural], NS, SEEDED[plural]), dumps(b), expect=(400, 422)))

    # 7. Body limits (just under the limit but too big an object).
    big = body_of("configmaps", "big")
    big["data"] = {"k": "x" * (2 * MIB)}
    add(Case("configmap over 1 MiB", "POST", post_path("configmaps"), dumps(big), expect=422))
    add(Case("empty body", "POST", post_path("configmaps"), b"", expect=400))

    # 8. Patches: unknown types, broken JSON patches, patches that break the object.
    targets = [(p, rpath(R[p], NS, SEEDED[p])) for p in plurals]
    for ctype in ("application/apply-patch+yaml", "text/plain", JSON, "", "application/json-patch",
                  "application/merge-patch+json+x", "multipart/form-data", YAML):
        plural, path = rng.choice(targets)
        add(Case(f"unknown patch type {ctype!r}", "PATCH", path, b"{}", {"Content-Type": ctype}, expect=415))
    bad_json_patches = [
        b"{}", b"[{}]", b"[{\"op\":\"add\"}]", b"[{\"op\":\"frob\",\"path\":\"/a\"}]",
        b"[{\"op\":\"add\",\"path\":\"metadata\",\"value\":1}]", b"[{\"op\":\"add\",\"path\":\"/a~2b\",\"value\":1}]",
        b"[{\"op\":\"remove\",\"path\":\"/nope/deeper\"}]", b"[{\"op\":\"replace\",\"path\":\"/zzz\",\"value\":1}]",
        b"[{\"op\":\"move\",\"from\":\"/nope\",\"path\":\"/x\"}]", b"[{\"op\":\"copy\",\"from\":\"/nope\",\"path\":\"/x\"}]",
        b"[{\"op\":\"test\",\"path\":\"/kind\",\"value\":\"Nope\"}]", b"[{\"op\":\"add\",\"path\":\"/metadata/labels/a\"}]",
        b"[{\"op\":\"add\",\"path\":\"/metadata/finalizers/99\",\"value\":\"x\"}]", b"[1, 2]", b"[\"op\"]",
        b"[{\"op\":\"replace\",\"path\":\"/metadata/name\",\"value\":\"renamed\"}]",
        b"[{\"op\":\"replace\",\"path\":\"/kind\",\"value\":\"Other\"}]",
        b"[{\"op\":\"replace\",\"path\":\"/metadata\",\"value\":[]}]",
        b"[{\"op\":\"add\",\"path\":\"/metadata/labels/bad key\",\"value\":\"x\"}]",
        b"[{\"op\":\"replace\",\"path\":\"/metadata/uid\",\"value\":\"other\"}]",
        b"[{\"op\":\"add\",\"path\":\"/metadata/labels\",\"value\":\"notamap\"}]",
        b"[{\"op\":\"test\",\"path\":\"/metadata/name\",\"value\":\"x\"},{\"op\":\"remove\",\"path\":\"/metadata/labels\"}]",
        b"[{\"op\":\"add\",\"path\":\"/metadata/labels/x\",\"value\":\"y\"},{\"op\":\"remove\",\"path\":\"/zzz\"}]",
        b"[" + b",".join([b"{\"op\":\"test\",\"path\":\"/kind\",\"value\":\"x\"}"] * 10001) + b"]",
        b"[{\"op\":\"add\",\"path\":\"/metadata/resourceVersion\",\"value\":\"1\"},"
        b"{\"op\":\"add\",\"path\":\"/metadata/labels/z\",\"value\":\"z\"}]",
        b"not json", b"[{\"op\":\"add\",\"path\":\"/a\",\"value\":" + b"[" * 2000 + b"]" * 2000 + b"}]",
    ]
    for jp in bad_json_patches:
        for plural, path in rng.sample(targets, 3):
            add(Case(f"bad json patch {jp[:40]!r} {plural}", "PATCH", path, jp, {"Content-Type": JSON_PATCH}))
    bad_merge = [b"[1]", b"null", b"\"s\"", b"{\"metadata\":{\"name\":\"other\"}}", b"{\"kind\":\"Other\"}",
                 b"{\"apiVersion\":\"v9\"}", b"{\"metadata\":{\"labels\":{\"bad key\":\"x\"}}}",
                 b"{\"metadata\":{\"labels\":[]}}", b"{\"metadata\":{\"uid\":\"other\"}}",
                 b"{\"metadata\":{\"namespace\":\"elsewhere\"}}", b"{\"metadata\":[]}", b"{bad",
                 b"{\"metadata\":{\"resourceVersion\":\"1\"},\"x\":1}",
                 b"{\"metadata\":{\"finalizers\":[\"not a finalizer!\"]}}",
                 b"{\"a\":" * 1200 + b"1" + b"}" * 1200]
    # (Events accept any labels/finalizers upstream; cluster-scoped objects ignore a namespace.)
    merge_targets = [(p, path) for p, path in targets if R[p].namespaced and p != "events"]
    for mp in bad_merge:
        for ctype in (MERGE_PATCH, SMP):
            for plural, path in rng.sample(merge_targets, 2):
                add(Case(f"bad merge patch {mp[:40]!r} {ctype} {plural}", "PATCH", path, mp, {"Content-Type": ctype}))
    for ctype, body in ((SMP, b"{\"spec\":{\"containers\":[{\"$patch\":\"bogus\",\"name\":\"c\"}]}}"),
                        (SMP, b"{\"spec\":{\"containers\":\"notalist\"}}"),
                        (SMP, b"{\"spec\":{\"containers\":[{\"image\":\"no-name\"}]}}"),
                        (SMP, b"{\"$patch\":\"delete\"}"),
                        (MERGE_PATCH, b"{\"spec\":{\"containers\":null}}"),
                        (MERGE_PATCH, b"{\"spec\":{\"nodeName\":\"other-node\"}}")):
        add(Case(f"bad pod patch {body[:40]!r}", "PATCH", rpath(R["pods"], NS, SEEDED["pods"]), body,
                 {"Content-Type": ctype}))
    for plural, path in rng.sample(targets, 4):
        add(Case(f"patch missing {plural}", "PATCH", path.rsplit("/", 1)[0] + "/does-not-exist", b"{}",
                 {"Content-Type": MERGE_PATCH}, expect=404))

    # 9. Malformed selectors and list/watch parameters.
    list_paths = [rpath(R[p], NS) for p in plurals] + [rpath(R[p]) for p in plurals]
    for s in BAD_LABEL_SELECTORS:
        path = rng.choice(list_paths)
        q = urllib.parse.quote(s, safe="")
        add(Case(f"bad labelSelector {s[:20]!r}", "GET", f"{path}?labelSelector={q}", expect=400))
        add(Case(f"bad labelSelector watch {s[:20]!r}", "GET", f"{path}?watch=true&labelSelector={q}", expect=400))
        add(Case(f"bad labelSelector deletecollection {s[:20]!r}", "DELETE", f"{rpath(R['configmaps'], NS)}?labelSelector={q}",
                 expect=400))
    for s in BAD_FIELD_SELECTORS:
        path = rng.choice(list_paths)
        q = urllib.parse.quote(s, safe="")
        add(Case(f"bad fieldSelector {s!r}", "GET", f"{path}?fieldSelector={q}", expect=400))
        add(Case(f"bad fieldSelector watch {s!r}", "GET", f"{path}?watch=1&fieldSelector={q}", expect=400))
        add(Case(f"bad fieldSelector deletecollection {s!r}", "DELETE", f"{rpath(R['pods'], NS)}?fieldSelector={q}",
                 expect=400))
    for v in BAD_RVS:
        q = urllib.parse.quote(v, safe="")
        add(Case(f"bad list resourceVersion {v!r}", "GET", f"{rng.choice(list_paths)}?resourceVersion={q}", expect=400))
        add(Case(f"bad watch resourceVersion {v!r}", "GET", f"{rng.choice(list_paths)}?watch=true&resourceVersion={q}",
                 expect=400))
    for match in ("Bogus", "exact", "NotOlderThan"):
        add(Case(f"resourceVersionMatch {match} without resourceVersion", "GET",
                 f"{rng.choice(list_paths)}?resourceVersionMatch={match}", expect=(400, 422)))
    add(Case("resourceVersionMatch Exact with 0", "GET", f"{rng.choice(list_paths)}?resourceVersion=0&resourceVersionMatch=Exact",
             expect=(400, 422)))
    add(Case("resourceVersionMatch bogus", "GET", f"{rng.choice(list_paths)}?resourceVersion=1&resourceVersionMatch=Bogus",
             expect=(400, 422)))
    for v in BAD_INTS:
        q = urllib.parse.quote(v, safe="")
        if v:
            add(Case(f"bad limit {v!r}", "GET", f"{rng.choice(list_paths)}?limit={q}", expect=400))
            add(Case(f"bad timeoutSeconds {v!r}", "GET", f"{rng.choice(list_paths)}?watch=true&timeoutSeconds={q}",
                     expect=400))
            add(Case(f"bad gracePeriodSeconds {v!r}", "DELETE",
                     f"{rpath(R['configmaps'], NS, SEEDED['configmaps'])}?gracePeriodSeconds={q}", expect=400))
    for token in ("!!!", "abc", base64.urlsafe_b64encode(b"{\"s\":1}").decode(), "e30", "%%%",
                  base64.urlsafe_b64encode(b"[1,2,3]").decode(), "x" * 5000):
        q = urllib.parse.quote(token, safe="")
        add(Case(f"bad continue {token[:10]!r}", "GET", f"{rng.choice(list_paths)}?limit=1&continue={q}", expect=400))
    stale = base64.urlsafe_b64encode(dumps({"v": "np1", "s": "0123456789abcdef", "rv": 1, "i": 1})).decode().rstrip("=")
    add(Case("unknown continue snapshot", "GET", f"{rpath(R['configmaps'])}?limit=1&continue={stale}", expect=410))
    add(Case("continue with resourceVersion", "GET", f"{rpath(R['configmaps'])}?limit=1&continue={stale}&resourceVersion=5",
             expect=(400, 410)))
    add(Case("bad includeObject", "GET", f"{rpath(R['pods'], NS)}?includeObject=Bogus",
             headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}, expect=400))
    for accept in ("application/vnd.kubernetes.protobuf", "text/html", "image/png"):
        add(Case(f"unacceptable {accept}", "GET", rpath(R["pods"], NS), headers={"Accept": accept}, expect=406))

    # 10. Deletes that must not delete: bad options, failed preconditions, missing objects.
    for plural in plurals:
        path = rpath(R[plural], NS, SEEDED[plural])
        add(Case(f"delete uid precondition {plural}", "DELETE", path,
                 dumps({"preconditions": {"uid": "not-the-uid"}}), expect=409))
        add(Case(f"delete rv precondition {plural}", "DELETE", path,
                 dumps({"preconditions": {"resourceVersion": "1"}}), expect=409))
        add(Case(f"delete options not an object {plural}", "DELETE", path, rng.choice([b"[]", b"1", b"\"x\""]),
                 expect=400))
        add(Case(f"delete options bad json {plural}", "DELETE", path, b"{\"preconditions\":", expect=400))
        add(Case(f"delete preconditions wrong type {plural}", "DELETE", path,
                 dumps({"preconditions": rng.choice(["x", [], 1])}), expect=400))
        add(Case(f"delete preconditions uid wrong type {plural}", "DELETE", path,
                 dumps({"preconditions": {"uid": rng.choice([1, ["x"], {"a": 1}])}}), expect=(400, 409)))
        add(Case(f"delete missing {plural}", "DELETE", path.rsplit("/", 1)[0] + "/does-not-exist", expect=404))
    pod_path = rpath(R["pods"], NS, SEEDED["pods"])
    for grace in ("soon", [], {"a": 1}, -1.5, "1e3"):
        add(Case(f"pod delete gracePeriodSeconds {grace!r}", "DELETE", pod_path,
                 dumps({"gracePeriodSeconds": grace, "preconditions": {"uid": "nope"}}), expect=(400, 409)))
        add(Case(f"pod delete gracePeriodSeconds only {grace!r}", "DELETE", pod_path,
                 dumps({"gracePeriodSeconds": grace}), expect=400))

    # 11. Stale updates and status rules.
    for plural in plurals:
        b = body_of(plural, SEEDED[plural])
        b["metadata"]["resourceVersion"] = "1"
        add(Case(f"stale update {plural}", "PUT", rpath(R[plural], NS, SEEDED[plural]), dumps(b), expect=409))

    # 12. Unknown paths and unsupported methods.
    unknown = ["/api/v2", "/apis/foo/v1/bars", "/api/v1/namespaces/fuzz/unknowns", "/api/v1/widgets",
               "/apis/apps/v1/namespaces/fuzz/replicasets", "/api/v1/namespaces/fuzz/pods/p/log",
               f"/api/v1/namespaces/fuzz/configmaps/{SEEDED['configmaps']}/status",
               "/api/v1/namespaces/fuzz/pods/a/b/c/d", "/apis/apps/v2/deployments", "/apis/x", "/openapi/v3/nope",
               "/apis/networking.k8s.io/v1/namespaces/fuzz/pods", "/api/v1/nodes/n/status/extra", "/../../etc/passwd",
               "/api/v1/namespaces/fuzz/pods/%00", "/api", "/apis/discovery.k8s.io/v1beta1",
               "/api/v1/nodes/x/proxy", "//api//v1", "/api/v1/namespaces/a/namespaces/b/pods"]
    for p in unknown:
        if p in ("/api", "//api//v1"):
            add(Case(f"POST to {p}", "POST", p, b"{}", expect=(404, 405)))
            continue
        add(Case(f"unknown path {p}", "GET", p, expect=404))
        add(Case(f"unknown path put {p}", "PUT", p, b"{}", expect=404))
    for method in ("OPTIONS", "TRACE", "CONNECT", "FOO", "PROPFIND", "LINK"):
        for path in (rpath(R["pods"], NS), rpath(R["pods"], NS, SEEDED["pods"]), "/api/v1", "/apis"):
            add(Case(f"method {method} {path}", method, path, expect=(404, 405)))
    add(Case("POST to a name", "POST", rpath(R["configmaps"], NS, SEEDED["configmaps"]),
             dumps(body_of("configmaps", SEEDED["configmaps"])), expect=405))
    add(Case("PUT to a collection", "PUT", rpath(R["configmaps"], NS), dumps(body_of("configmaps", "x")), expect=405))
    add(Case("PATCH a collection", "PATCH", rpath(R["configmaps"], NS), b"{}", {"Content-Type": MERGE_PATCH},
             expect=405))
    add(Case("DELETE a status", "DELETE", rpath(R["pods"], NS, SEEDED["pods"], "status"), expect=405))
    add(Case("POST to discovery", "POST", "/apis/apps/v1", b"{}", expect=405))
    add(Case("POST to a status", "POST", rpath(R["pods"], NS, SEEDED["pods"], "status"), b"{}", expect=405))

    # 13. Content types.
    for ctype in ("text/plain", "application/vnd.kubernetes.protobuf", "application/x-www-form-urlencoded",
                  "application/xml"):
        add(Case(f"unsupported body type {ctype}", "POST", post_path("configmaps"),
                 dumps(body_of("configmaps", "ctype")), {"Content-Type": ctype}, expect=415))

    # 14. GET requests with a body (legal HTTP; the body must not desync the connection).
    for i in range(5):
        add(Case(f"GET with a body {i}", "GET", rpath(R["pods"], NS, "does-not-exist"), b"x" * rng.randrange(1, 5000),
                 expect=404))

    rng.shuffle(cases)
    return cases


def _get(obj: Any, p: tuple) -> Any:
    for k in p:
        obj = obj[k]
    return obj


def _set(obj: Any, p: tuple, value: Any) -> None:
    for k in p[:-1]:
        obj = obj[k]
    obj[p[-1]] = value


# -- raw-socket cases ---------------------------------------------------------------------------------------


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def run_raw_cases(port: int, rng: random.Random) -> int:
    """Requests http.client would refuse to send. Returns how many were sent."""
    sent = 0
    cm_post = post_path("configmaps")
    good = dumps(body_of("configmaps", "raw-created"))

    # Huge bodies with a correct Content-Length: 413 before the body is read, then the connection closes.
    for size in (3 * MIB + 1, 10 * MIB, 2**40):
        data = raw_request("POST", cm_post, {"Content-Type": JSON, "Content-Length": str(size)}, good + b" " * 65536)
        resp = raw_exchange(port, data)
        sent += 1
        assert resp.status == 413, (size, resp)
        assert_status_body(f"huge {size}", 413, resp.headers.get("content-type", ""), resp.body)
        assert resp.headers.get("connection", "").lower() == "close", resp.headers

    # Bogus Content-Length values: 400 and the connection is closed (the body's framing is unknown).
    for value in ("abc", "-1", "1e3", "0x10", "+5", "5 5", "", "1_0", "٣"):
        data = raw_request("POST", cm_post, {"Content-Type": JSON, "Content-Length": value}, good)
        resp = raw_exchange(port, data)
        sent += 1
        assert resp.status == 400, (value, resp)
        assert_status_body(f"content-length {value!r}", 400, resp.headers.get("content-type", ""), resp.body)
    data = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Content-Length: %d\r\n\r\n" % (cm_post, len(good), len(good) + 5)).encode() + good + b"abcde"
    resp = raw_exchange(port, data)
    sent += 1
    assert resp.status == 400, resp
    # Chunked request bodies are refused with 411 (and the connection closed, not read as a request).
    data = raw_request("POST", cm_post, {"Content-Type": JSON, "Transfer-Encoding": "chunked"},
                       b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good))
    resp = raw_exchange(port, data)
    sent += 1
    assert resp.status == 411, resp
    assert_status_body("chunked", 411, resp.headers.get("content-type", ""), resp.body)

    # Headers without a body, and a body shorter than its Content-Length: never acted on.
    for declared, body in ((100, b""), (len(good) + 50, good), (len(good) * 2, good)):
        data = raw_request("POST", cm_post, {"Content-Type": JSON, "Content-Length": str(declared)}, body)
        resp = raw_exchange(port, data, shut_write=True)
        sent += 1
        assert resp.status in (400, None), resp  # a reply to a half-closed request is optional
        if resp.status is not None:
            assert_status_body("short body", 400, resp.headers.get("content-type", ""), resp.body)

    # Random bytes as the request line: any 4xx, or the connection closed; never a 5xx.
    alphabet = b"GETPOSUDLAHCNabcdefghijklmnopqrstuvwxyz0123456789/ ?&=%:.-_\t\x00\x7f\xff\xfe~"
    for i in range(60):
        n = rng.randrange(1, 200)
        line = bytes(rng.choice(alphabet) for _ in range(n))
        if i % 3 == 0:
            line = rng.choice([b"GET ", b"POST ", b"HTTP/1.1 ", b"PUT /api/v1 "]) + line
        if i % 4 == 0:
            line += b" HTTP/1.1"
        data = line + rng.choice([b"\r\n\r\n", b"\n\n", b"\r\nHost: x\r\n\r\n", b"\r\nbad header line\r\n\r\n"])
        resp = raw_exchange(port, data, shut_write=True)
        sent += 1
        version = line.rsplit(b" ", 1)[-1] if b" " in line else b""
        unsupported_version = version.startswith(b"HTTP/") and not version.startswith(b"HTTP/1.")
        assert resp.status is None or 400 <= resp.status < 500 or (
            resp.status == 505 and unsupported_version) or (
            resp.status == 200 and line.startswith(b"GET ")), (line, resp.status, resp.body[:200])
    # Request line too long, too many headers, a header line too long: 4xx (protocol-level
    # answers, which need not be JSON, as Go's net/http under the real server).
    for data in (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                 b"GET /api HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
                 b"GET /api HTTP/1.1\r\nX-Big: " + b"y" * 70000 + b"\r\n\r\n"):
        resp = raw_exchange(port, data, shut_write=True)
        sent += 1
        assert resp.status is not None and 400 <= resp.status < 500, (data[:60], resp.status)
    # An HTTP version the server does not speak: 505, as Go's server answers too.
    resp = raw_exchange(port, b"GET /api HTTP/9.9\r\n\r\n", shut_write=True)
    sent += 1
    assert resp.status in (None, 400, 505), resp.status  # (http.server answers it HTTP/0.9-style)

    # Slowloris-lite: connections that send half a request and close, some held open meanwhile.
    held = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        half = rng.choice([b"GET /api/v1/namesp", b"POST /api/v1/namespaces/fuzz/configmaps HTTP/1.1\r\nContent-Le",
                           b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a", b"G",
                           raw_request("POST", cm_post, {"Content-Type": JSON, "Content-Length": "1000"}, good)])
        s.sendall(half)
        sent += 1
        if i % 2:
            s.close()
        else:
            held.append(s)
    # The server still answers while those are open.
    resp = raw_exchange(port, raw_request("GET", "/api/v1/namespaces/fuzz", {}))
    assert resp.status == 200, resp
    for s in held:
        s.close()
    time.sleep(0.2)  # let the server threads see those closes before anything is compared

    # Keep-alive stays in sync across error responses (bodies of failed requests are drained).
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        pipeline = (raw_request("POST", cm_post, {"Content-Type": "text/plain", "Content-Length": "5"}, b"hello")
                    + raw_request("GET", "/api/v1/namespaces/fuzz/pods/nope", {"Content-Length": "3"}, b"xyz")
                    + raw_request("PATCH", rpath(R["configmaps"], NS, SEEDED["configmaps"]),
                                  {"Content-Type": "text/plain", "Content-Length": "2"}, b"{}")
                    + raw_request("GET", "/api/v1/namespaces/fuzz", {}))
        s.sendall(pipeline)
        reader = RawReader(s)
        codes = [reader.response().status for _ in range(4)]
        sent += 4
        assert codes == [415, 404, 415, 200], codes
    return sent


# -- the test ---------------------------------------------------------------------------------------------------


def test_malformed_requests_change_nothing(server: ApiServer) -> None:
    started = time.monotonic()
    host, port = server.servers[0].server_address[:2]
    rng = random.Random(SEED)
    rv_before, before = dump(port)
    assert len(before) >= len(VALID) + 4  # the seeds and the default namespaces

    cases = build_cases(rng)
    svc = before[(R["services"].key, NS, SEEDED["services"])]
    body = body_of("services", "ip-taken")
    body["spec"]["clusterIP"] = svc["spec"]["clusterIP"]
    for c in cases:
        if c.label == "service clusterIP in use":
            c.body = dumps(body)
    assert len(cases) >= 500, len(cases)

    client = Client(host, port)
    failures: list[str] = []
    codes: dict[int, int] = {}
    for case in cases:
        code, headers, data = client.send(case)
        codes[code] = codes.get(code, 0) + 1
        if not case.allows(code):
            failures.append(f"{case.label}: {case.method} {case.path[:100]} -> {code} {data[:300]!r}")
            continue
        try:
            assert_status_body(case.label, code, headers.get("content-type", ""), data)
        except (AssertionError, ValueError) as e:
            failures.append(str(e)[:400])
        if time.monotonic() - started > TIME_BUDGET:
            failures.append(f"over the {TIME_BUDGET:.0f} s budget after {case.label} (answers too slow?)")
            break
    client.close()
    assert not failures, f"{len(failures)} of {len(cases)} requests misanswered:\n" + "\n".join(failures[:60])
    raw_sent = run_raw_cases(port, rng)

    # The server is still up, logged no internal errors, and nothing changed.
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/api/v1/namespaces/fuzz")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["metadata"]["name"] == NS
    conn.close()
    errors = [r.getMessage() for r in server.errors.records]
    assert not errors, errors[:5]
    rv_after, after = dump(port)
    assert rv_after == rv_before
    assert after.keys() == before.keys(), (sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys()))
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, changed
    assert server.store.rv == int(rv_before)
    elapsed = time.monotonic() - started
    assert elapsed < TIME_BUDGET, elapsed
    print(f"\nfuzz: {len(cases)} http.client requests + {raw_sent} raw-socket requests in {elapsed:.1f}s; "
          f"codes {dict(sorted(codes.items()))}")


def test_concurrent_garbage_keeps_the_server_serving(server: ApiServer) -> None:
    """Several clients at once throwing garbage while a well-behaved client lists; no errors."""
    host, port = server.servers[0].server_address[:2]
    rv_before, before = dump(port)
    rng = random.Random(SEED + 1)
    stop = time.monotonic() + 2.0
    problems: list[str] = []

    def garbage(seed: int) -> None:
        r = random.Random(seed)
        while time.monotonic() < stop:
            payload = bytes(r.randrange(256) for _ in range(r.randrange(1, 300)))
            try:
                raw_exchange(port, payload + b"\r\n\r\n", shut_write=True, timeout=2)
            except OSError:
                pass
            try:
                client = Client(host, port)
                code, _, _ = client.send(Case("garbage post", "POST", post_path("configmaps"), payload))
                client.close()
                if code != 400:
                    problems.append(f"garbage POST -> {code}")
            except AssertionError as e:
                problems.append(str(e))

    def lister() -> None:
        client = Client(host, port)
        while time.monotonic() < stop:
            code, _, _ = client.send(Case("list", "GET", rpath(R["configmaps"], NS)))
            if code != 200:
                problems.append(f"list -> {code}")
        client.close()

    threads = [threading.Thread(target=garbage, args=(rng.randrange(1 << 30),)) for _ in range(4)]
    threads.append(threading.Thread(target=lister))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert not problems, problems[:10]
    rv_after, after = dump(port)
    assert (rv_after, after) == (rv_before, before)


def test_a_finished_watch_leaves_the_connection_usable(server: ApiServer) -> None:
    """A watch that ends by its timeoutSeconds ends its chunked body cleanly; the keep-alive
    connection then serves the next request (a pooling client reuses it), as Go's server does."""
    host, port = server.servers[0].server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", f"{rpath(R['configmaps'], NS)}?watch=true&timeoutSeconds=1&resourceVersion=0")
        resp = conn.getresponse()
        lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
        assert resp.status == 200 and not resp.will_close
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", SEEDED["configmaps"])]
        conn.request("POST", post_path("configmaps"), body=b"{", headers={"Content-Type": JSON})
        again = conn.getresponse()
        assert again.status == 400 and json.loads(again.read())["kind"] == "Status"
    finally:
        conn.close()
