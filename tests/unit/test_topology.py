"""Topology files: loading, defaults, the underlay plan, and every error with file:line: field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from netplane.errors import ConfigError
from netplane.sandbox.topology import (
    HostSpec,
    NodeSpec,
    Topology,
    TopologyError,
    load_topology,
)

REPO = Path(__file__).resolve().parents[2]
SRC = "topologies/x.yaml"


def load(text: str, source: str = SRC) -> Topology:
    return load_topology(source, text=textwrap.dedent(text))


def error(text: str, source: str = SRC) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(text, source)
    return info.value


def pod(name: str, **meta: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta},
            "spec": {"containers": [{"name": "c", "image": "netplane/host"}]}}


# --- the shipped files -------------------------------------------------------------------------


def test_default_topology_loads() -> None:
    topo = load_topology(REPO / "topologies/default.yaml")
    assert topo.name == "np"
    assert topo.nodes == (NodeSpec("node1", "zone-a"), NodeSpec("node2", "zone-b"))
    assert [h.name for h in topo.hosts] == ["client"]
    assert (topo.cni, topo.proxy, topo.dns) == ("netplane", "iptables", True)
    objs = {(m["kind"], m["metadata"]["name"]): m for m in topo.manifests}
    assert set(objs) == {("Pod", "web-1"), ("Pod", "web-2"), ("Pod", "client"),
                         ("Service", "web")}
    for name, node in (("web-1", "node1"), ("web-2", "node2")):
        spec = objs["Pod", name]["spec"]
        assert spec["nodeName"] == node
        assert objs["Pod", name]["metadata"]["labels"] == {"app": "web"}
        (container,) = spec["containers"]
        assert container["command"] == ["python3", "-m", "http.server", "8080"]
        probe = container["readinessProbe"]
        assert (probe.get("tcpSocket") or probe.get("httpGet"))["port"] == 8080
    assert objs["Pod", "client"]["spec"]["containers"][0]["command"] == ["sleep", "infinity"]
    svc = objs["Service", "web"]["spec"]
    assert svc["selector"] == {"app": "web"}
    assert svc["ports"][0]["port"] == 80 and svc["ports"][0]["targetPort"] == 8080


def test_three_nodes_fixture_loads() -> None:
    topo = load_topology(REPO / "topologies/three-nodes.yaml")
    assert topo.node_names == ("node1", "node2", "node3")


# --- forms, defaults, helpers ------------------------------------------------------------------


def test_count_form_and_defaults() -> None:
    topo = load("nodes: 3\n")
    assert topo.node_names == ("node1", "node2", "node3")
    assert topo == Topology(name="np", nodes=tuple(NodeSpec(f"node{i}") for i in (1, 2, 3)),
                            source=SRC)
    assert (topo.underlay_subnet, topo.underlay_mtu) == ("172.30.0.0/24", 1500)
    assert (topo.cluster_cidr, topo.node_cidr_mask) == ("10.244.0.0/16", 24)
    assert (topo.service_cidr, topo.dns_ip, topo.cluster_domain) == (
        "10.96.0.0/16", "10.96.0.10", "cluster.local")


def test_full_form() -> None:
    topo = load("""\
        name: t1
        nodes:
          - name: a
            zone: z1
            labels: {example.com/rack: r1}
          - {name: b}
        hosts:
          - {name: ext, role: client}
          - {name: dns, address: 192.168.5.5}
          - {name: ext2}
        network:
          underlay: {subnet: 192.168.5.0/28, mtu: 9000}
          clusterCIDR: 10.8.0.0/16
          nodeCIDRMaskSize: 26
          serviceCIDR: 10.9.0.0/24
          clusterDomain: example.internal
        cni: netplane
        proxy: ebpf
        dns: yes
        """)
    assert topo.nodes[0] == NodeSpec("a", "z1", {"example.com/rack": "r1"})
    assert topo.nodes[0].node_labels == {"example.com/rack": "r1",
                                         "topology.kubernetes.io/zone": "z1"}
    assert topo.hosts[1] == HostSpec("dns", "192.168.5.5", None)
    assert topo.dns_ip == "10.9.0.10"  # the 10th address of the service range by default
    assert (topo.cni, topo.proxy, topo.dns, topo.underlay_mtu) == ("netplane", "ebpf", True, 9000)
    # The underlay plan: .1 gateway (and apiserver), nodes, then free addresses for hosts.
    assert topo.underlay_plan.gateway == "192.168.5.1"
    assert topo.underlay_plan.prefixlen == 28
    assert dict(topo.underlay_plan.nodes) == {"a": "192.168.5.2", "b": "192.168.5.3"}
    assert dict(topo.underlay_plan.hosts) == {"ext": "192.168.5.4", "dns": "192.168.5.5", "ext2": "192.168.5.6"}


def test_underlay_plan_skips_pinned_host_addresses() -> None:
    topo = load("""\
        nodes: 2
        hosts:
          - {name: h1}
          - {name: h2, address: 172.30.0.4}
          - {name: h3}
        """)
    assert dict(topo.underlay_plan.nodes) == {"node1": "172.30.0.2", "node2": "172.30.0.3"}
    assert dict(topo.underlay_plan.hosts) == {"h1": "172.30.0.5", "h2": "172.30.0.4", "h3": "172.30.0.6"}


def test_nulls_mean_defaults_and_yaml_dates_stay_strings() -> None:
    topo = load("""\
        name:
        nodes: 1
        hosts:
        network: {underlay: ~, dnsIP: null}
        manifests:
          - apiVersion: v1
            kind: ConfigMap
            metadata: {name: c}
            data: {when: 2024-01-02}
        """)
    assert topo.name == "np" and topo.hosts == ()
    assert topo.manifests[0]["data"] == {"when": "2024-01-02"}


def test_round_trip_to_dict_from_dict() -> None:
    topo = load_topology(REPO / "topologies/default.yaml")
    data = json.loads(json.dumps(topo.to_dict()))  # as state.json stores it
    assert data["source"] == str(REPO / "topologies/default.yaml")
    back = Topology.from_dict(data)
    assert back == topo
    # Without `source`, to_dict() output is itself a valid topology file.
    del data["source"]
    again = load(json.dumps(data), source="state.json")
    assert again.nodes == topo.nodes and again.manifests == topo.manifests


def test_round_trip_keeps_hosts_and_labels() -> None:
    topo = load("""\
        name: rt
        nodes: [{name: a, zone: z, labels: {k: v}}]
        hosts: [{name: h, address: 172.30.0.9, role: r}, {name: g}]
        proxy: iptables
        """)
    assert Topology.from_dict(topo.to_dict()) == topo


def test_from_dict_validates_without_lines() -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({"nodes": 2, "cni": "calico", "source": "s.json"})
    assert str(info.value) == 's.json: cni: unknown value "calico" (one of: bridge, netplane)'
    assert info.value.line is None


def test_renamed_checks_the_name() -> None:
    topo = load("nodes: 1\n")
    assert topo.renamed("demo2").name == "demo2"
    with pytest.raises(TopologyError, match=r"^--name: name: invalid cluster name"):
        topo.renamed("Demo-2")


def test_error_is_a_config_error_with_parts() -> None:
    exc = error("nodes: 1\ncni: x\n")
    assert isinstance(exc, ConfigError)
    assert (exc.source, exc.line, exc.field) == (SRC, 2, "cni")
    assert exc.problem == 'unknown value "x" (one of: bridge, netplane)'


# --- manifestFiles -----------------------------------------------------------------------------


def test_manifest_files_resolve_relative_to_the_topology(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "a.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s1}\n---\n")
    absolute = tmp_path / "b.yaml"
    absolute.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: x}\n")
    topo_file = tmp_path / "t.yaml"
    topo_file.write_text(textwrap.dedent(f"""\
        nodes: 1
        manifests:
          - {{apiVersion: v1, kind: Pod, metadata: {{name: p0}}}}
        manifestFiles:
          - apps/a.yaml
          - {absolute}
        """))
    topo = load_topology(topo_file)
    assert [m["metadata"]["name"] for m in topo.manifests] == ["p0", "p1", "s1", "p2"]
    # The dict form inlines them, so state.json does not depend on the files any more.
    assert "manifestFiles" not in topo.to_dict()
    assert Topology.from_dict(topo.to_dict()) == topo


def test_manifest_file_errors_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: x\n")
    topo_file = tmp_path / "t.yaml"
    topo_file.write_text("nodes: 1\nmanifestFiles: [a.yaml]\n")
    with pytest.raises(TopologyError) as info:
        load_topology(topo_file)
    assert str(info.value) == (f"{tmp_path / 'a.yaml'}:7: manifestFiles[0][1].metadata.name: "
                               "required field is missing")


def test_manifest_file_missing(tmp_path: Path) -> None:
    topo_file = tmp_path / "t.yaml"
    topo_file.write_text("nodes: 1\nmanifestFiles:\n  - nope.yaml\n")
    with pytest.raises(TopologyError) as info:
        load_topology(topo_file)
    assert str(info.value) == (f"{topo_file}:3: manifestFiles[0]: file not found: "
                               f"{tmp_path / 'nope.yaml'}")


def test_manifest_file_alias_and_syntax(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: &m {name: a}\n"
                                     "---\napiVersion: v1\nkind: Pod\nmetadata: *m\n")
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: [\n")
    topo_file = tmp_path / "t.yaml"
    topo_file.write_text("nodes: 1\nmanifestFiles: [a.yaml]\n")
    with pytest.raises(TopologyError, match=r"a\.yaml:7: manifestFiles\[0\]\[1\]\.metadata: "
                                            r"YAML alias \*m is not accepted"):
        load_topology(topo_file)
    topo_file.write_text("nodes: 1\nmanifestFiles: [b.yaml]\n")
    with pytest.raises(TopologyError, match=r"b\.yaml:3: invalid YAML"):
        load_topology(topo_file)


def test_duplicate_object_across_inline_and_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(json.dumps(pod("web")))
    topo_file = tmp_path / "t.yaml"
    topo_file.write_text("nodes: 1\nmanifests:\n  - " + json.dumps(pod("web")) +
                         "\nmanifestFiles: [a.yaml]\n")
    with pytest.raises(TopologyError) as info:
        load_topology(topo_file)
    assert str(info.value) == (f"{tmp_path / 'a.yaml'}:1: manifestFiles[0][0].metadata.name: "
                               f"duplicate object Pod web (also at {topo_file}:3 manifests[0])")


def test_reading_a_missing_topology() -> None:
    with pytest.raises(TopologyError) as info:
        load_topology("/nonexistent/t.yaml")
    assert str(info.value) == "/nonexistent/t.yaml: file not found: /nonexistent/t.yaml"


# --- every error: (yaml, line, field, part of the problem) -------------------------------------

ERRORS = [
    # YAML itself
    ("nodes: [1, 2\n", 2, "", "invalid YAML"),
    ("nodes:\n  - &n {name: a}\n  - *n\n", 3, "nodes[1]", "YAML alias *n is not accepted"),
    ("base: &b {mtu: 1}\nnodes: 1\nnetwork: {underlay: *b}\n", 3, "network.underlay",
     "YAML alias *b is not accepted"),
    ("nodes: 1\n---\nnodes: 2\n", 2, "", "a topology file holds one YAML document"),
    ("", 1, "", "the file is empty"),
    ("# only a comment\n", 1, "", "the file is empty"),
    ("- nodes\n", 1, "", "the top level must be a mapping"),
    ("nodes: 1\nnodes: 2\n", 2, "nodes", "duplicate key (first on line 1)"),
    ("nodes: 1\n80: x\n", 2, "", "keys must be strings, not an integer 80"),
    ("nodes: 1\nnetwork:\n  <<: {mtu: 1}\n", 3, "network", "YAML merge keys (<<) are not"),
    ("nodes: !!set {a}\n", 1, "nodes", "unsupported YAML tag tag:yaml.org,2002:set"),
    ("nodes: 1\nname: !custom x\n", 2, "name", "unsupported YAML tag !custom"),
    # unknown fields, every level
    ("nodes: 1\nnodez: 2\n", 2, "nodez", 'unknown field "nodez" (allowed: name, nodes, hosts,'),
    ("nodes:\n  - name: a\n    zoen: z\n", 3, "nodes[0].zoen",
     'unknown field "zoen" (allowed: name, zone, labels)'),
    ("nodes: 1\nhosts:\n  - {name: h, ip: 1.2.3.4}\n", 3, "hosts[0].ip",
     'unknown field "ip" (allowed: name, address, role)'),
    ("nodes: 1\nnetwork:\n  podCIDR: 10.0.0.0/8\n", 3, "network.podCIDR",
     "(allowed: underlay, clusterCIDR, nodeCIDRMaskSize, serviceCIDR, clusterDomain, dnsIP)"),
    ("nodes: 1\nnetwork:\n  underlay:\n    cidr: 10.0.0.0/8\n", 4, "network.underlay.cidr",
     'unknown field "cidr" (allowed: subnet, mtu)'),
    # types and required fields
    ("name: np\n", 1, "nodes", "required: a node count"),
    ("nodes: yes\n", 1, "nodes", "must be a node count or a list"),
    ("nodes: '2'\n", 1, "nodes", "must be a node count or a list"),
    ("nodes: 0\n", 1, "nodes", "0 is out of range: must be between 1 and 1000"),
    ("nodes: 1001\n", 1, "nodes", "out of range"),
    ("nodes: []\n", 1, "nodes", "must list at least one node"),
    ("nodes:\n  - node1\n", 2, "nodes[0]", "must be a mapping, not a string"),
    ("nodes:\n  - zone: z\n", 2, "nodes[0].name", "required field is missing"),
    ("nodes: 1\nhosts: {name: h}\n", 2, "hosts", "must be a list, not a mapping"),
    ("nodes: 1\nhosts:\n  - role: x\n", 3, "hosts[0].name", "required field is missing"),
    ("nodes: 1\nnetwork: 10.0.0.0/8\n", 2, "network", "must be a mapping, not a string"),
    ("nodes: 1\nnetwork:\n  underlay: {mtu: '1500'}\n", 3, "network.underlay.mtu",
     "must be an integer, not a string"),
    ("nodes: 1\nnetwork:\n  nodeCIDRMaskSize: 24.0\n", 3, "network.nodeCIDRMaskSize",
     "must be an integer, not a number"),
    ("nodes: 1\ndns: 'true'\n", 2, "dns", "must be true or false, not a string"),
    ("nodes: 1\nname: 7\n", 2, "name", "must be a string, not an integer"),
    ("nodes:\n  - {name: a, labels: {k: 1}}\n", 2, "nodes[0].labels.k",
     "label values must be strings, not an integer"),
    ("nodes:\n  - {name: a, labels: [x]}\n", 2, "nodes[0].labels", "must be a mapping of label"),
    # names
    ("nodes:\n  - name: n1\n  - name: n1\n", 3, "nodes[1].name", 'duplicate node name "n1"'),
    ("nodes: 1\nhosts:\n  - name: h\n  - name: h\n", 4, "hosts[1].name",
     'duplicate host name "h" (first at hosts[0])'),
    ("nodes: 1\nhosts:\n  - name: node1\n", 3, "hosts[0].name",
     'host name "node1" is also a node name'),
    ("nodes:\n  - name: Node_1\n", 2, "nodes[0].name", 'invalid node name "Node_1": a lowercase'),
    ("nodes:\n  - name: a.b\n", 2, "nodes[0].name", "must not contain dots"),
    ("nodes:\n  - name: averyverylongname\n", 2, "nodes[0].name",
     'node name "averyverylongname" is 17 characters, at most 12 allowed: it becomes part of '
     "network interface names, which Linux limits to 15 characters"),
    ("nodes: 1\nhosts:\n  - name: client-number-1\n", 3, "hosts[0].name",
     "at most 12 allowed"),
    ("name: My-Cluster\nnodes: 1\n", 1, "name",
     'invalid cluster name "My-Cluster": must be 1 to 8 characters of [a-z0-9] (it prefixes'),
    ("name: toolongname\nnodes: 1\n", 1, "name", "must be 1 to 8 characters"),
    ("nodes:\n  - {name: a, zone: 'z 1'}\n", 2, "nodes[0].zone", 'invalid zone "z 1"'),
    ("nodes:\n  - name: a\n    labels:\n      'a/b/c': x\n", 4, 'nodes[0].labels["a/b/c"]',
     'invalid label key "a/b/c"'),
    ("nodes:\n  - name: a\n    zone: z1\n    labels: {topology.kubernetes.io/zone: z2}\n", 4,
     'nodes[0].labels["topology.kubernetes.io/zone"]', '"z2" contradicts zone "z1"'),
    # CIDRs
    ("nodes: 1\nnetwork:\n  clusterCIDR: 10.244.0.0\n", 3, "network.clusterCIDR",
     "has no prefix length"),
    ("nodes: 1\nnetwork:\n  clusterCIDR: banana\n", 3, "network.clusterCIDR",
     '"banana" is not a CIDR'),
    ("nodes: 1\nnetwork:\n  serviceCIDR: 10.96.0.1/16\n", 3, "network.serviceCIDR",
     '"10.96.0.1/16" has host bits set (did you mean 10.96.0.0/16?)'),
    ("nodes: 1\nnetwork:\n  clusterCIDR: fd00::/64\n", 3, "network.clusterCIDR", "IPv4-only"),
    ("nodes: 1\nnetwork:\n  underlay: {subnet: 127.1.0.0/24}\n", 3, "network.underlay.subnet",
     "loopback, multicast or reserved"),
    ("nodes: 1\nnetwork:\n  clusterCIDR: 10.96.0.0/12\n", 3, "network.clusterCIDR",
     "10.96.0.0/12 overlaps network.serviceCIDR (10.96.0.0/16, the default): the underlay, "
     "pod and service ranges must not overlap"),
    ("nodes: 1\nnetwork:\n  underlay: {subnet: 10.244.7.0/24}\n", 3, "network.underlay.subnet",
     "overlaps network.clusterCIDR (10.244.0.0/16, the default)"),
    ("nodes: 1\nnetwork:\n  serviceCIDR: 10.0.0.0/12\n  clusterCIDR: 10.8.0.0/16\n"
     "  dnsIP: 10.0.0.10\n", 3, "network.serviceCIDR",
     "10.0.0.0/12 overlaps network.clusterCIDR (10.8.0.0/16)"),
    ("nodes: 1\nnetwork:\n  nodeCIDRMaskSize: 8\n", 3, "network.nodeCIDRMaskSize",
     "node subnets of /8 do not fit in clusterCIDR 10.244.0.0/16"),
    ("nodes: 3\nnetwork:\n  clusterCIDR: 10.244.0.0/23\n", 3, "network.clusterCIDR",
     "clusterCIDR 10.244.0.0/23 holds only 2 node subnet(s) of /24 for 3 nodes"),
    ("nodes: 5\nnetwork:\n  nodeCIDRMaskSize: 18\n", 3, "network.nodeCIDRMaskSize",
     "holds only 4 node subnet(s) of /18 for 5 nodes"),
    ("nodes: 1\nnetwork:\n  nodeCIDRMaskSize: 31\n", 3, "network.nodeCIDRMaskSize",
     "31 is out of range: must be between 1 and 30"),
    ("nodes: 1\nnetwork:\n  serviceCIDR: 10.96.0.0/29\n  dnsIP: 10.96.0.3\n", 3,
     "network.serviceCIDR", "the prefix length must be between 12 and 28"),
    ("nodes: 1\nnetwork:\n  dnsIP: 10.97.0.10\n", 3, "network.dnsIP",
     "10.97.0.10 is outside serviceCIDR 10.96.0.0/16"),
    ("nodes: 1\nnetwork:\n  dnsIP: fd00::10\n", 3, "network.dnsIP", "is outside serviceCIDR"),
    ("nodes: 1\nnetwork:\n  dnsIP: 10.96.0.1\n", 3, "network.dnsIP",
     "the address of the `kubernetes` Service"),
    ("nodes: 1\nnetwork:\n  dnsIP: 10.96.0.0\n", 3, "network.dnsIP", "first or last address"),
    ("nodes: 1\nnetwork:\n  dnsIP: dns\n", 3, "network.dnsIP", '"dns" is not an IP address'),
    ("nodes: 1\nnetwork:\n  clusterDomain: Cluster.Local\n", 3, "network.clusterDomain",
     'invalid domain "Cluster.Local"'),
    # underlay capacity and host addresses
    ("nodes: 5\nhosts: [{name: h}]\nnetwork:\n  underlay: {subnet: 172.30.0.0/29}\n", 4,
     "network.underlay.subnet",
     "172.30.0.0/29 has 6 usable addresses; 5 node(s) + 1 host(s) + the gateway need 7"),
    ("nodes: 1\nhosts:\n  - {name: h, address: 10.0.0.5}\n", 3, "hosts[0].address",
     "10.0.0.5 is not a usable address of the underlay 172.30.0.0/24"),
    ("nodes: 1\nhosts:\n  - {name: h, address: 172.30.0.255}\n", 3, "hosts[0].address",
     "not a usable address of the underlay"),
    ("nodes: 1\nhosts:\n  - {name: h, address: 172.30.0.5/24}\n", 3, "hosts[0].address",
     "is not an IP address (give it without a prefix length"),
    ("nodes: 1\nhosts:\n  - {name: h, address: 172.30.0.1}\n", 3, "hosts[0].address",
     "172.30.0.1 is the underlay gateway address"),
    ("nodes: 2\nhosts:\n  - {name: h, address: 172.30.0.3}\n", 3, "hosts[0].address",
     '172.30.0.3 is node "node2"\'s underlay address (nodes take 172.30.0.2 onwards'),
    ("nodes: 1\nhosts:\n  - {name: h, address: 172.30.0.9}\n  - {name: g, address: 172.30.0.9}\n",
     4, "hosts[1].address", "172.30.0.9 is also the address of hosts[0]"),
    # MTU, cni, proxy
    ("nodes: 1\nnetwork:\n  underlay: {mtu: 9216}\n", 3, "network.underlay.mtu",
     "9216 is out of range: must be between 576 and 9000"),
    ("nodes: 1\nnetwork:\n  underlay: {mtu: 500}\n", 3, "network.underlay.mtu", "out of range"),
    ("nodes: 1\ncni: calico\n", 2, "cni", 'unknown value "calico" (one of: bridge, netplane)'),
    ("nodes: 1\nproxy: ipvs\n", 2, "proxy", 'unknown value "ipvs" (one of: none, iptables, agent, ebpf)'),
    ("nodes: 1\nproxy: false\n", 2, "proxy", "must be a string (one of: none, iptables, agent, ebpf)"),
    ("nodes: 1\ncni: bridge\nproxy: agent\n", 3, "proxy",
     "'agent' hosts the proxy in netplane's CNI agent, which cni: bridge does not run"),
    # manifests
    ("nodes: 1\nmanifests: {kind: Pod}\n", 2, "manifests", "must be a list, not a mapping"),
    ("nodes: 1\nmanifests:\n  - just text\n", 3, "manifests[0]",
     "must be a Kubernetes object (a mapping), not a string"),
    ("nodes: 1\nmanifests:\n  - kind: Pod\n    metadata: {name: a}\n", 3,
     "manifests[0].apiVersion", "required field is missing"),
    ("nodes: 1\nmanifests:\n  - apiVersion: v1\n    metadata: {name: a}\n", 3,
     "manifests[0].kind", "required field is missing"),
    ("nodes: 1\nmanifests:\n  - apiVersion: v1\n    kind: Pod\n", 3, "manifests[0].metadata",
     "required field is missing"),
    ("nodes: 1\nmanifests:\n  - apiVersion: v1\n    kind: Pod\n    metadata: []\n", 5,
     "manifests[0].metadata", "must be a mapping, not a list"),
    ("nodes: 1\nmanifests:\n  - apiVersion: v1\n    kind: Pod\n    metadata:\n"
     "      labels: {a: b}\n", 5, "manifests[0].metadata.name", "required field is missing"),
    ("nodes: 1\nmanifests:\n  - apiVersion: 1\n    kind: Pod\n    metadata: {name: a}\n", 3,
     "manifests[0].apiVersion", "must be a string, not an integer"),
    ("nodes: 1\nmanifests:\n  - {apiVersion: v1, kind: Pod, metadata: {name: a}}\n"
     "  - {apiVersion: v1, kind: Pod, metadata: {name: a}}\n", 4, "manifests[1].metadata.name",
     f"duplicate object Pod a (also at {SRC}:3 manifests[0])"),
    ("nodes: 1\nmanifestFiles: apps.yaml\n", 2, "manifestFiles", "must be a list, not a string"),
    ("nodes: 1\nmanifestFiles: [7]\n", 2, "manifestFiles[0]", "must be a string"),
]


@pytest.mark.parametrize(("text", "line", "field", "problem"), ERRORS,
                         ids=[f"{i}-{e[2] or 'file'}" for i, e in enumerate(ERRORS)])
def test_errors_name_file_line_and_field(text: str, line: int, field: str, problem: str) -> None:
    exc = error(text)
    prefix = f"{SRC}:{line}: {field}: " if field else f"{SRC}:{line}: "
    assert str(exc).startswith(prefix), str(exc)
    assert problem in exc.problem, str(exc)
    assert (exc.line, exc.field) == (line, field)


def test_same_object_name_in_other_namespace_or_kind_is_fine() -> None:
    topo = load("""\
        nodes: 1
        manifests:
          - {apiVersion: v1, kind: Pod, metadata: {name: a}}
          - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: other}}
          - {apiVersion: v1, kind: Service, metadata: {name: a}}
        """)
    assert len(topo.manifests) == 3


def test_alias_bomb_is_refused_before_expanding() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    exc = error(bomb)
    assert (exc.line, exc.field) == (2, "b[0]")


def test_absurd_nesting_is_an_error_not_a_crash() -> None:
    exc = error("nodes: 1\nmanifests: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in str(exc)


def test_readme_example_loads(tmp_path: Path) -> None:
    readme = (REPO / "topologies/README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "apps.yaml").write_text(json.dumps(pod("from-file")))
    (tmp_path / "t.yaml").write_text(example)
    topo = load_topology(tmp_path / "t.yaml")
    assert topo.node_names == ("node1", "node2")
    assert dict(topo.underlay_plan.hosts) == {"client": "172.30.0.50"}
    assert [m["metadata"]["name"] for m in topo.manifests] == ["web-1", "from-file"]
