"""categorize_endpoints, table-driven after kube-proxy's TestCategorizeEndpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from netplane.proxy.model import EndpointInfo, NodeContext, ServicePortInfo, ServicePortName
from netplane.proxy.topology import categorize_endpoints

NODE = NodeContext(name="node-1", zone="zone-a")
NAME = ServicePortName("ns", "svc", "http", "TCP")


def svc(*, topology: bool = False, itp_local: bool = False, etp_local: bool = False,
        node_port: int = 0) -> ServicePortInfo:
    return ServicePortInfo(NAME, "10.96.0.1", 80, "TCP", 80, node_port=node_port,
                           topology_aware=topology, internal_policy_local=itp_local,
                           external_policy_local=etp_local)


def ep(ip: str, *, ready: bool = True, serving: bool | None = None, terminating: bool = False,
       node: str = "", hints: tuple[str, ...] | None = None) -> EndpointInfo:
    return EndpointInfo(ip, 80, ready=ready, serving=ready if serving is None else serving,
                        terminating=terminating, node_name=node, zone_hints=hints)


def ips(eps: tuple[EndpointInfo, ...]) -> set[str]:
    return {e.ip for e in eps}


@dataclass
class Case:
    name: str
    svc: ServicePortInfo
    endpoints: list[EndpointInfo]
    cluster: set[str] | None  # None: the service uses no cluster endpoints → ()
    local: set[str] | None
    all_reachable: set[str] = field(default_factory=set)
    has_any: bool = True
    node: NodeContext = NODE


CASES = [
    Case("hints disabled, hints present: all ready endpoints",
         svc(), [ep("10.1.2.3", hints=("zone-a",)), ep("10.1.2.4", hints=("zone-b",)),
                 ep("10.1.2.5", hints=("zone-c",)), ep("10.1.2.6", hints=("zone-a",))],
         {"10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"}, None,
         {"10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"}),
    Case("hints enabled, hints for every endpoint: zone only",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-a",)), ep("10.1.2.4", hints=("zone-b",)),
                              ep("10.1.2.5", hints=("zone-c",)), ep("10.1.2.6", hints=("zone-a",))],
         {"10.1.2.3", "10.1.2.6"}, None, {"10.1.2.3", "10.1.2.6"}),
    Case("hints, multiple zones per endpoint",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-b", "zone-c")),
                              ep("10.1.2.4", hints=("zone-a", "zone-b"))],
         {"10.1.2.4"}, None, {"10.1.2.4"}),
    Case("hints, node without a zone: all",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-a",)), ep("10.1.2.4", hints=("zone-b",))],
         {"10.1.2.3", "10.1.2.4"}, None, {"10.1.2.3", "10.1.2.4"}, node=NodeContext("node-1")),
    Case("hints, no endpoint hinted for this zone: all",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-b",)), ep("10.1.2.4", hints=("zone-c",))],
         {"10.1.2.3", "10.1.2.4"}, None, {"10.1.2.3", "10.1.2.4"}),
    Case("hints, one ready endpoint without hints: all",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-a",)), ep("10.1.2.4")],
         {"10.1.2.3", "10.1.2.4"}, None, {"10.1.2.3", "10.1.2.4"}),
    Case("hints, an unready endpoint without hints does not matter",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-a",)), ep("10.1.2.4", hints=("zone-b",)),
                              ep("10.1.2.5", ready=False)],
         {"10.1.2.3"}, None, {"10.1.2.3"}),
    Case("empty hints count as missing",
         svc(topology=True), [ep("10.1.2.3", hints=("zone-a",)), ep("10.1.2.4", hints=())],
         {"10.1.2.3", "10.1.2.4"}, None, {"10.1.2.3", "10.1.2.4"}),
    Case("iTP Local with local endpoints",
         svc(itp_local=True), [ep("10.0.0.0", node="node-1"), ep("10.0.0.1", node="node-1"),
                               ep("10.0.0.2"), ep("10.0.0.3")],
         None, {"10.0.0.0", "10.0.0.1"}, {"10.0.0.0", "10.0.0.1"}),
    Case("iTP Local without local endpoints",
         svc(itp_local=True), [ep("10.0.0.0"), ep("10.0.0.1")],
         None, set(), set(), has_any=True),
    Case("iTP Local with only non-ready endpoints: nothing anywhere",
         svc(itp_local=True), [ep("10.0.0.0", ready=False, node="node-1")],
         None, set(), set(), has_any=False),
    Case("iTP Local ignores topology",
         svc(itp_local=True, topology=True),
         [ep("10.0.0.0", node="node-1", hints=("zone-b",)), ep("10.0.0.1", hints=("zone-a",))],
         None, {"10.0.0.0"}, {"10.0.0.0"}),
    Case("eTP Local, cluster superset of local",
         svc(etp_local=True, node_port=30000),
         [ep("10.0.0.0", node="node-1"), ep("10.0.0.1"), ep("10.0.0.2")],
         {"10.0.0.0", "10.0.0.1", "10.0.0.2"}, {"10.0.0.0"},
         {"10.0.0.0", "10.0.0.1", "10.0.0.2"}),
    Case("eTP Local without local endpoints: DROP, not REJECT",
         svc(etp_local=True, node_port=30000), [ep("10.0.0.1"), ep("10.0.0.2")],
         {"10.0.0.1", "10.0.0.2"}, set(), {"10.0.0.1", "10.0.0.2"}),
    Case("eTP Local without being externally accessible behaves as Cluster",
         svc(etp_local=True), [ep("10.0.0.0", node="node-1"), ep("10.0.0.1")],
         {"10.0.0.0", "10.0.0.1"}, None, {"10.0.0.0", "10.0.0.1"}),
    Case("eTP Local + topology: local endpoint outside the zone still reachable",
         svc(etp_local=True, node_port=30000, topology=True),
         [ep("10.0.0.0", node="node-1", hints=("zone-b",)), ep("10.0.0.1", hints=("zone-a",)),
          ep("10.0.0.2", hints=("zone-b",))],
         {"10.0.0.1"}, {"10.0.0.0"}, {"10.0.0.0", "10.0.0.1"}),
    Case("iTP Local + eTP Cluster (externally accessible): both sets",
         svc(itp_local=True, node_port=30000),
         [ep("10.0.0.0", node="node-1"), ep("10.0.0.1"), ep("10.0.0.2")],
         {"10.0.0.0", "10.0.0.1", "10.0.0.2"}, {"10.0.0.0"},
         {"10.0.0.0", "10.0.0.1", "10.0.0.2"}),
    Case("Cluster: no ready endpoints, fall back to serving+terminating",
         svc(), [ep("10.0.0.0", ready=False, serving=True, terminating=True),
                 ep("10.0.0.1", ready=False, serving=False, terminating=True),
                 ep("10.0.0.2", ready=False, serving=True, terminating=True, node="node-1")],
         {"10.0.0.0", "10.0.0.2"}, None, {"10.0.0.0", "10.0.0.2"}),
    Case("Cluster: ready endpoints win over terminating ones",
         svc(), [ep("10.0.0.0"), ep("10.0.0.1", ready=False, serving=True, terminating=True)],
         {"10.0.0.0"}, None, {"10.0.0.0"}),
    Case("Cluster fallback ignores topology",
         svc(topology=True),
         [ep("10.0.0.0", ready=False, serving=True, terminating=True, hints=("zone-b",)),
          ep("10.0.0.1", ready=False, serving=True, terminating=True, hints=("zone-a",))],
         {"10.0.0.0", "10.0.0.1"}, None, {"10.0.0.0", "10.0.0.1"}),
    Case("only not-serving endpoints: nothing, REJECT",
         svc(), [ep("10.0.0.0", ready=False, serving=False, terminating=True),
                 ep("10.0.0.1", ready=False)],
         set(), None, set(), has_any=False),
    Case("no endpoints at all",
         svc(), [], set(), None, set(), has_any=False),
    Case("iTP Local: local ready preferred over local terminating",
         svc(itp_local=True),
         [ep("10.0.0.0", node="node-1"),
          ep("10.0.0.1", ready=False, serving=True, terminating=True, node="node-1")],
         None, {"10.0.0.0"}, {"10.0.0.0"}),
    Case("iTP Local: only terminating locally, ready remotely",
         svc(itp_local=True),
         [ep("10.0.0.0", ready=False, serving=True, terminating=True, node="node-1"),
          ep("10.0.0.1", ready=False, serving=False, terminating=True, node="node-1"),
          ep("10.0.0.2", node="node-2")],
         None, {"10.0.0.0"}, {"10.0.0.0"}),
    Case("eTP Local: terminating local endpoint + ready remote ones: union reachable",
         svc(etp_local=True, node_port=30000),
         [ep("10.0.0.0", ready=False, serving=True, terminating=True, node="node-1"),
          ep("10.0.0.1", node="node-2"), ep("10.0.0.2", node="node-2")],
         {"10.0.0.1", "10.0.0.2"}, {"10.0.0.0"}, {"10.0.0.0", "10.0.0.1", "10.0.0.2"}),
    Case("eTP Local: everything terminating",
         svc(etp_local=True, node_port=30000),
         [ep("10.0.0.0", ready=False, serving=True, terminating=True, node="node-1"),
          ep("10.0.0.1", ready=False, serving=True, terminating=True, node="node-2"),
          ep("10.0.0.2", ready=False, serving=False, terminating=True, node="node-1")],
         {"10.0.0.0", "10.0.0.1"}, {"10.0.0.0"}, {"10.0.0.0", "10.0.0.1"}),
    Case("endpoints without a node name are never local",
         svc(itp_local=True), [ep("10.0.0.0", node="")], None, set(), set(),
         node=NodeContext(name="")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_categorize_endpoints(case: Case) -> None:
    got = categorize_endpoints(case.svc, case.endpoints, case.node)
    assert ips(got.cluster) == (case.cluster or set())
    assert ips(got.local) == (case.local or set())
    assert ips(got.all_reachable) == case.all_reachable
    assert got.has_any_endpoints is case.has_any
    # all_reachable keeps the input (sorted) order and has no duplicates
    order = [e.ip for e in case.endpoints]
    reach = [e.ip for e in got.all_reachable]
    assert reach == sorted(reach, key=order.index) and len(set(reach)) == len(reach)
