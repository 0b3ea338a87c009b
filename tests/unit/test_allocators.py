"""ClusterIP and NodePort allocation: ranges, explicit requests, conflicts, exhaustion, release,
rebuild, and the two-phase plan/apply that leaves nothing changed when a request is rejected."""

from __future__ import annotations

import ipaddress
import random

import pytest

from netplane.apiserver.allocators import AllocationError, AllocationPlan, ServiceAllocator


def alloc(cidr: str = "10.96.0.0/24", ports: tuple[int, int] = (30000, 30099), seed: int = 7) -> ServiceAllocator:
    return ServiceAllocator(cidr, ports, rng=random.Random(seed))


def svc(type_: str = "ClusterIP", cluster_ip: str | None = None, ports: list[dict] | None = None, **spec) -> dict:
    s: dict = {"type": type_, "ports": ports if ports is not None else [{"port": 80, "protocol": "TCP"}], **spec}
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
    return {"metadata": {"name": "s", "namespace": "default"}, "spec": s}


def create(a: ServiceAllocator, new: dict, old: dict | None = None) -> dict:
    out, plan = a.plan(old, new)
    a.apply(plan)
    return out


# -- construction -------------------------------------------------------------------------------------


def test_invalid_ranges_are_rejected():
    with pytest.raises(ValueError):
        ServiceAllocator("10.96.0.1/24")  # host bits set
    with pytest.raises(ValueError):
        ServiceAllocator("not-a-cidr")
    with pytest.raises(ValueError):
        ServiceAllocator("10.96.0.0/24", (32000, 31000))
    with pytest.raises(ValueError):
        ServiceAllocator("10.96.0.0/24", (0, 100))
    with pytest.raises(ValueError):
        ServiceAllocator("10.96.0.0/24", (1, 70000))


# -- ClusterIP ---------------------------------------------------------------------------------------


def test_random_cluster_ips_are_inside_the_cidr_and_never_network_or_broadcast():
    a = alloc("10.96.0.0/28")  # 14 usable addresses
    net = ipaddress.ip_network("10.96.0.0/28")
    seen = set()
    for _ in range(14):
        out = create(a, svc())
        ip = out["spec"]["clusterIP"]
        assert out["spec"]["clusterIPs"] == [ip]
        addr = ipaddress.ip_address(ip)
        assert addr in net
        assert addr not in (net.network_address, net.broadcast_address)
        assert ip not in seen
        seen.add(ip)
    assert len(seen) == 14 and a.ips == seen


def test_random_ips_spread_over_a_large_range():
    a = alloc("10.96.0.0/12", seed=1)
    ips = {create(a, svc())["spec"]["clusterIP"] for _ in range(50)}
    assert len(ips) == 50
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/12") for ip in ips)


def test_exhausting_a_slash_29_is_a_clear_error():
    a = alloc("10.0.0.0/29")  # 6 usable addresses: .1 - .6
    ips = {create(a, svc())["spec"]["clusterIP"] for _ in range(6)}
    assert ips == {f"10.0.0.{i}" for i in range(1, 7)}
    with pytest.raises(AllocationError) as exc:
        a.plan(None, svc())
    assert exc.value.field == "spec.clusterIPs"
    assert "10.0.0.0/29 is full" in str(exc.value)
    assert a.ips == ips  # the failed attempt took nothing


def test_explicit_cluster_ip():
    a = alloc()
    out = create(a, svc(cluster_ip="10.96.0.10"))
    assert out["spec"]["clusterIP"] == "10.96.0.10" and out["spec"]["clusterIPs"] == ["10.96.0.10"]
    assert "10.96.0.10" in a.ips
    # clusterIPs alone is honoured too.
    out2 = create(a, svc(clusterIPs=["10.96.0.11"]))
    assert out2["spec"]["clusterIP"] == "10.96.0.11"


def test_explicit_cluster_ip_in_use_is_an_error():
    a = alloc()
    create(a, svc(cluster_ip="10.96.0.10"))
    with pytest.raises(AllocationError, match="already allocated") as exc:
        a.plan(None, svc(cluster_ip="10.96.0.10"))
    assert exc.value.field == "spec.clusterIPs" and exc.value.value == "10.96.0.10"


@pytest.mark.parametrize("ip", ["10.97.0.1", "192.168.0.1", "fd00::1"])
def test_explicit_cluster_ip_outside_the_range_is_an_error(ip):
    a = alloc()
    with pytest.raises(AllocationError, match="not in the valid range"):
        a.plan(None, svc(cluster_ip=ip))
    assert a.ips == set()


def test_invalid_cluster_ip_is_an_error():
    with pytest.raises(AllocationError, match="valid IP"):
        alloc().plan(None, svc(cluster_ip="10.96.0.300"))


def test_headless_and_external_name_services_take_no_ip():
    a = alloc()
    out = create(a, svc(cluster_ip="None"))
    assert out["spec"]["clusterIP"] == "None" and out["spec"]["clusterIPs"] == ["None"]
    ext = create(a, svc("ExternalName", cluster_ip="10.96.0.5", externalName="example.com"))
    assert "clusterIP" not in ext["spec"] and "clusterIPs" not in ext["spec"]
    assert a.ips == set()


def test_an_update_keeps_its_own_ip():
    a = alloc()
    old = create(a, svc(cluster_ip="10.96.0.10"))
    new, plan = a.plan(old, svc(cluster_ip="10.96.0.10", ports=[{"port": 81}]))
    assert new["spec"]["clusterIP"] == "10.96.0.10"
    assert plan == AllocationPlan()


def test_plan_release_frees_everything():
    a = alloc()
    out = create(a, svc("NodePort", cluster_ip="10.96.0.10", ports=[{"port": 80, "nodePort": 30001}]))
    a.apply(a.plan_release(out))
    assert a.ips == set() and a.ports == set()
    create(a, svc("NodePort", cluster_ip="10.96.0.10", ports=[{"port": 80, "nodePort": 30001}]))


# -- NodePorts ----------------------------------------------------------------------------------------


def test_node_ports_are_allocated_in_range():
    a = alloc(ports=(30000, 30009))
    out = create(a, svc("NodePort", ports=[{"port": 80}, {"port": 443}]))
    ports = [p["nodePort"] for p in out["spec"]["ports"]]
    assert len(set(ports)) == 2
    assert all(30000 <= p <= 30009 for p in ports)
    assert a.ports == set(ports)


def test_node_port_range_exhaustion():
    a = alloc(ports=(30000, 30002))
    create(a, svc("NodePort", ports=[{"port": 1}, {"port": 2}, {"port": 3}]))
    assert a.ports == {30000, 30001, 30002}
    with pytest.raises(AllocationError, match="30000-30002 is full"):
        a.plan(None, svc("NodePort"))


def test_explicit_node_port():
    a = alloc()
    out = create(a, svc("NodePort", ports=[{"port": 80, "nodePort": 30050}, {"port": 81}]))
    assert out["spec"]["ports"][0]["nodePort"] == 30050
    assert out["spec"]["ports"][1]["nodePort"] != 30050
    assert 30050 in a.ports


def test_explicit_node_port_conflicts():
    a = alloc()
    create(a, svc("NodePort", ports=[{"port": 80, "nodePort": 30050}]))
    with pytest.raises(AllocationError, match="already allocated") as exc:
        a.plan(None, svc("NodePort", ports=[{"port": 80, "nodePort": 30050}]))
    assert exc.value.field == "spec.ports[0].nodePort"
    with pytest.raises(AllocationError, match="not in the valid range"):
        a.plan(None, svc("NodePort", ports=[{"port": 80, "nodePort": 8080}]))
    with pytest.raises(AllocationError, match="must be an integer"):
        a.plan(None, svc("NodePort", ports=[{"port": 80, "nodePort": "30051"}]))


def test_explicit_ports_are_reserved_before_dynamic_ones():
    a = alloc(ports=(30000, 30001))
    out = create(a, svc("NodePort", ports=[{"port": 80}, {"port": 81, "nodePort": 30000}]))
    assert [p["nodePort"] for p in out["spec"]["ports"]] == [30001, 30000]


def test_same_node_port_for_tcp_and_udp_in_one_service():
    a = alloc()
    out = create(a, svc("NodePort", ports=[
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30053},
        {"name": "dns-udp", "port": 53, "protocol": "UDP", "nodePort": 30053},
    ]))
    assert [p["nodePort"] for p in out["spec"]["ports"]] == [30053, 30053]
    assert a.ports == {30053}
    # Another Service still cannot have it.
    with pytest.raises(AllocationError, match="already allocated"):
        a.plan(None, svc("NodePort", ports=[{"port": 53, "protocol": "UDP", "nodePort": 30053}]))


def test_health_check_node_port_for_local_load_balancers():
    a = alloc()
    out = create(a, svc("LoadBalancer", externalTrafficPolicy="Local", ports=[{"port": 80}]))
    hc = out["spec"]["healthCheckNodePort"]
    np = out["spec"]["ports"][0]["nodePort"]
    assert 30000 <= hc <= 30099 and hc != np
    assert a.ports == {hc, np}
    # An explicit one is checked like any node port.
    with pytest.raises(AllocationError, match="already allocated") as exc:
        a.plan(None, svc("LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=hc))
    assert exc.value.field == "spec.healthCheckNodePort"
    with pytest.raises(AllocationError, match="already allocated"):
        a.plan(None, svc("LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=30070,
                         ports=[{"port": 80, "nodePort": 30070}]))
    out2 = create(a, svc("LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=30071))
    assert out2["spec"]["healthCheckNodePort"] == 30071


def test_no_health_check_port_without_local_policy():
    a = alloc()
    for spec in (svc("LoadBalancer", externalTrafficPolicy="Cluster", healthCheckNodePort=30010),
                 svc("NodePort", externalTrafficPolicy="Local", healthCheckNodePort=30010)):
        out = create(a, spec)
        assert "healthCheckNodePort" not in out["spec"]
    assert 30010 not in a.ports


def test_load_balancer_may_opt_out_of_node_ports():
    a = alloc()
    out = create(a, svc("LoadBalancer", allocateLoadBalancerNodePorts=False,
                        ports=[{"port": 80}, {"port": 81, "nodePort": 30005}]))
    assert "nodePort" not in out["spec"]["ports"][0]
    assert out["spec"]["ports"][1]["nodePort"] == 30005
    assert a.ports == {30005}


def test_type_change_releases_node_ports_and_ip():
    a = alloc()
    old = create(a, svc("LoadBalancer", externalTrafficPolicy="Local", ports=[{"port": 80, "nodePort": 30001}]))
    assert a.ports == {30001, old["spec"]["healthCheckNodePort"]}
    as_cluster_ip = create(a, svc(cluster_ip=old["spec"]["clusterIP"],
                                  ports=[{"port": 80, "nodePort": 30001}]), old)
    assert "nodePort" not in as_cluster_ip["spec"]["ports"][0]
    assert "healthCheckNodePort" not in as_cluster_ip["spec"]
    assert a.ports == set()
    assert a.ips == {old["spec"]["clusterIP"]}
    external = create(a, svc("ExternalName", externalName="example.com"), as_cluster_ip)
    assert "clusterIP" not in external["spec"]
    assert a.ips == set()


def test_update_keeps_its_own_node_ports():
    a = alloc()
    old = create(a, svc("NodePort", ports=[{"port": 80, "nodePort": 30001}]))
    new, plan = a.plan(old, svc("NodePort", cluster_ip=old["spec"]["clusterIP"],
                                ports=[{"port": 80, "nodePort": 30001}, {"port": 81}]))
    assert new["spec"]["ports"][0]["nodePort"] == 30001
    assert plan.ports_take == {new["spec"]["ports"][1]["nodePort"]} and plan.ports_free == set()


# -- rebuild and two-phase allocation -------------------------------------------------------------------


def test_rebuild_from_stored_services():
    a = alloc()
    stored = [
        svc("NodePort", cluster_ip="10.96.0.5", ports=[{"port": 80, "nodePort": 30007}]),
        svc("LoadBalancer", cluster_ip="10.96.0.6", externalTrafficPolicy="Local", healthCheckNodePort=30008,
            ports=[{"port": 80, "nodePort": 30009}]),
        svc(cluster_ip="None"),
        svc("ExternalName", externalName="x.example"),
        {"metadata": {}, "spec": {"clusterIPs": ["10.96.0.7"]}},
        {"metadata": {}},
    ]
    a.ips.add("10.96.0.99")  # stale state is dropped
    a.rebuild(stored)
    assert a.ips == {"10.96.0.5", "10.96.0.6", "10.96.0.7"}
    assert a.ports == {30007, 30008, 30009}
    with pytest.raises(AllocationError, match="already allocated"):
        a.plan(None, svc(cluster_ip="10.96.0.5"))


def test_plan_without_apply_changes_nothing():
    a = alloc()
    create(a, svc("NodePort", cluster_ip="10.96.0.1", ports=[{"port": 80, "nodePort": 30001}]))
    before_ips, before_ports = set(a.ips), set(a.ports)
    request = svc("LoadBalancer", externalTrafficPolicy="Local", ports=[{"port": 80}, {"port": 81}])
    snapshot = {"spec": dict(request["spec"]), "ports": [dict(p) for p in request["spec"]["ports"]]}
    out, plan = a.plan(None, request)
    assert len(plan.ips_take) == 1 and len(plan.ports_take) == 3
    # The plan filled in a copy: neither the request nor the allocator changed.
    assert request["spec"]["ports"] == snapshot["ports"] and "clusterIP" not in request["spec"]
    assert out is not request and out["spec"]["clusterIP"]
    assert (a.ips, a.ports) == (before_ips, before_ports)
    # A rejected plan does not leave anything behind either.
    with pytest.raises(AllocationError):
        a.plan(None, svc("NodePort", ports=[{"port": 80}, {"port": 81, "nodePort": 30001}]))
    assert (a.ips, a.ports) == (before_ips, before_ports)
    # Applying is what takes them.
    a.apply(plan)
    assert a.ips == before_ips | plan.ips_take and a.ports == before_ports | plan.ports_take


def test_held_ips_and_ports_ignore_odd_values():
    assert ServiceAllocator.held_ips(None) == set()
    assert ServiceAllocator.held_ips({"spec": {"clusterIP": "None"}}) == set()
    assert ServiceAllocator.held_ports({"spec": {"ports": ["x", {"nodePort": "1"}, {"nodePort": 0}],
                                                 "healthCheckNodePort": None}}) == set()


@pytest.mark.parametrize("ip", ["10.96.0.0", "10.96.0.255"])
def test_explicit_network_or_broadcast_address_is_an_error(ip):
    a = alloc("10.96.0.0/24")
    with pytest.raises(AllocationError, match="not in the valid range"):
        a.plan(None, svc(cluster_ip=ip))
    # The first and last usable ones are fine.
    create(a, svc(cluster_ip="10.96.0.1"))
    create(a, svc(cluster_ip="10.96.0.254"))


def test_tiny_ranges_use_every_address():
    a = alloc("10.0.0.4/31")
    assert {create(a, svc())["spec"]["clusterIP"] for _ in range(2)} == {"10.0.0.4", "10.0.0.5"}
    b = alloc("10.0.0.9/32")
    assert create(b, svc(cluster_ip="10.0.0.9"))["spec"]["clusterIP"] == "10.0.0.9"
