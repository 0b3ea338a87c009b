"""ClusterZone: incremental indexes, immutable snapshots, generation/modified, readiness."""

from __future__ import annotations

import dataclasses
import threading

from netplane.dns.zone import (
    CLUSTER_IP,
    EXTERNAL_NAME,
    HEADLESS,
    NO_PORTS,
    ClusterZone,
    PortRecord,
    build_service_record,
)
from netplane.k8s.objects import Service, ServicePort


def fresh(k8s, **kw):
    zone = ClusterZone(clock=lambda: 42.0, **kw)
    zone.on_namespace(None, k8s.namespace("ns"))
    return zone


def test_service_record_keeps_only_ready_endpoints_with_their_labels(k8s):
    svc = k8s.service("ns", "web", ["None"], k8s.HTTP)
    slices = [
        k8s.endpoint_slice("ns", "web-b", "web", [k8s.endpoint("10.1.0.3", pod="web-3")],
                           k8s.HTTP),
        k8s.endpoint_slice("ns", "web-a", "web", [
            k8s.endpoint("10.1.0.1", hostname="Host1"),
            k8s.endpoint("10.1.0.2", ready=False),
            k8s.endpoint("10.1.0.4", ready=None),
        ], k8s.HTTP),
        k8s.endpoint_slice("ns", "web-c", "web", [k8s.endpoint("fd00::")], [],
                           address_type="IPv6"),
    ]
    record = build_service_record(svc, slices)
    assert record.kind == HEADLESS and record.cluster_ips == ()
    assert [(e.ip, e.label, e.pod_label) for e in record.endpoints] == [
        ("10.1.0.1", "host1", "host1"),  # slices in name order; hostname lowercased
        ("10.1.0.4", "10-1-0-4", "10-1-0-4"),
        ("10.1.0.3", "10-1-0-3", "web-3"),
        ("fd00::", "fd00--0", "fd00--0"),
    ]
    assert record.endpoints[0].ports == (PortRecord("http", "tcp", 80),)
    assert record.endpoints[-1].ports == NO_PORTS


def test_service_kinds_and_ips(k8s):
    dual = build_service_record(k8s.service("ns", "d", ["10.0.0.1", "fd00::0001"], k8s.HTTP))
    assert dual.kind == CLUSTER_IP
    assert dual.cluster_ips == (("10.0.0.1", 4), ("fd00::1", 6))  # canonical form
    ext = build_service_record(k8s.service("ns", "e", None, [], type_="ExternalName",
                                           external_name="Example.COM."))
    assert ext.kind == EXTERNAL_NAME and ext.external_name == "Example.COM"
    assert build_service_record(k8s.service("ns", "n", ["10.0.0.2"], [])).ports == NO_PORTS


def test_generation_moves_only_on_effective_changes(k8s):
    zone = fresh(k8s)
    g0 = zone.generation
    svc = k8s.service("ns", "a", ["10.0.0.1"], k8s.HTTP)
    zone.on_service(None, svc)
    assert zone.generation == g0 + 1
    # Same DNS view (a field DNS does not use changed): nothing published.
    zone.on_service(svc, dataclasses.replace(svc, session_affinity="ClientIP"))
    assert zone.generation == g0 + 1
    # An unready endpoint changes nothing DNS can see either.
    zone.on_endpoint_slice(None, k8s.endpoint_slice("ns", "a-1", "a",
                                                    [k8s.endpoint("10.1.0.1", ready=False)]))
    assert zone.generation == g0 + 1
    zone.on_namespace(None, k8s.namespace("ns"))  # already known
    assert zone.generation == g0 + 1
    zone.on_service(svc, dataclasses.replace(svc, cluster_ips=("10.0.0.2",)))
    assert zone.generation == g0 + 2
    zone.mark_synced()
    zone.mark_synced()
    assert zone.generation == g0 + 3 and zone.has_synced()


def test_snapshots_are_immutable_views(k8s):
    zone = fresh(k8s)
    zone.on_service(None, k8s.service("ns", "a", ["10.0.0.1"], k8s.HTTP))
    before = zone.snapshot()
    zone.on_service(k8s.service("ns", "a", ["10.0.0.1"], k8s.HTTP), None)
    after = zone.snapshot()
    assert before.service("ns", "a") is not None
    assert before.services_with_cluster_ip("10.0.0.1")[0].name == "a"
    assert after.service("ns", "a") is None
    assert after.services_with_cluster_ip("10.0.0.1") == []
    assert "10.0.0.1" not in after.cluster_ip_index


def test_slices_before_their_service_and_after_it_is_gone(k8s):
    zone = fresh(k8s)
    eps = k8s.endpoint_slice("ns", "h-1", "h", [k8s.endpoint("10.1.0.1")])
    zone.on_endpoint_slice(None, eps)
    assert zone.snapshot().service("ns", "h") is None
    assert zone.snapshot().services_with_endpoint_ip("10.1.0.1") == []
    svc = k8s.service("ns", "h", ["None"])
    zone.on_service(None, svc)
    assert [e.ip for e in zone.snapshot().service("ns", "h").endpoints] == ["10.1.0.1"]
    assert zone.snapshot().services_with_endpoint_ip("10.1.0.1")[0].name == "h"
    zone.on_service(svc, None)
    zone.on_service(None, svc)  # re-created: its slices are still known
    assert [e.ip for e in zone.snapshot().service("ns", "h").endpoints] == ["10.1.0.1"]


def test_a_slice_relabelled_to_another_service_moves(k8s):
    zone = fresh(k8s)
    zone.on_service(None, k8s.service("ns", "x", ["None"]))
    zone.on_service(None, k8s.service("ns", "y", ["None"]))
    old = k8s.endpoint_slice("ns", "s", "x", [k8s.endpoint("10.1.0.1")])
    new = k8s.endpoint_slice("ns", "s", "y", [k8s.endpoint("10.1.0.1")])
    zone.on_endpoint_slice(None, old)
    zone.on_endpoint_slice(old, new)
    snap = zone.snapshot()
    assert snap.service("ns", "x").endpoints == ()
    assert [e.ip for e in snap.service("ns", "y").endpoints] == ["10.1.0.1"]
    assert [s.name for s in snap.services_with_endpoint_ip("10.1.0.1")] == ["y"]
    zone.on_endpoint_slice(new, None)
    assert zone.snapshot().service("ns", "y").endpoints == ()
    assert "10.1.0.1" not in zone.snapshot().endpoint_ip_index


def test_shared_ip_index_keeps_every_owner(k8s):
    zone = fresh(k8s)
    for name in ("p", "q"):
        zone.on_service(None, k8s.service("ns", name, ["None"]))
        zone.on_endpoint_slice(None, k8s.endpoint_slice("ns", name, name,
                                                        [k8s.endpoint("10.1.0.9")]))
    assert [s.name for s in zone.snapshot().services_with_endpoint_ip("10.1.0.9")] == ["p", "q"]
    zone.on_endpoint_slice(k8s.endpoint_slice("ns", "p", "p", [k8s.endpoint("10.1.0.9")]), None)
    assert [s.name for s in zone.snapshot().services_with_endpoint_ip("10.1.0.9")] == ["q"]


def test_informer_shaped_adapters(k8s):
    zone = ClusterZone()
    zone.add_namespace(k8s.namespace("ns"))
    svc = k8s.service("ns", "a", ["10.0.0.1"], k8s.HTTP)
    zone.add_service(svc)
    zone.update_service(svc, dataclasses.replace(svc, cluster_ips=("10.0.0.7",)))
    eps = k8s.endpoint_slice("ns", "a-1", "a", [k8s.endpoint("10.1.0.1")])
    zone.add_endpoint_slice(eps)
    snap = zone.snapshot()
    assert snap.service("ns", "a").cluster_ips == (("10.0.0.7", 4),)
    assert snap.namespace_exists("ns")
    zone.delete_endpoint_slice(eps)
    zone.delete_service(svc)
    zone.delete_namespace(k8s.namespace("ns"))
    snap = zone.snapshot()
    assert len(snap.services) == 0 and not snap.namespace_exists("ns")


def test_one_event_at_ten_thousand_services_copies_one_shard(k8s):
    """Per-event cost is O(the service): a change shares every untouched shard of every map
    with the previous snapshot, however large the cluster."""
    zone = fresh(k8s)
    http = (ServicePort(name="http", protocol="TCP", port=80, target_port=80),)
    for i in range(10_000):
        zone.on_service(None, Service(namespace="ns", name=f"s{i}", ports=http,
                                      cluster_ips=(f"10.{i // 250}.{i % 250}.1",)))
    before = zone.snapshot()
    zone.on_endpoint_slice(None, k8s.endpoint_slice("ns", "s5-1", "s5",
                                                    [k8s.endpoint("10.200.0.1")], k8s.HTTP))
    after = zone.snapshot()
    assert len(after.services) == 10_000
    assert after.services.shards_shared_with(before.services) == 255
    assert after.cluster_ip_index is before.cluster_ip_index  # untouched map: same object
    assert after.endpoint_ip_index.shards_shared_with(before.endpoint_ip_index) == 255


def test_readers_always_see_a_consistent_snapshot(k8s):
    """Every IP index entry of a snapshot names a service present in that same snapshot,
    while a writer thread churns."""
    zone = fresh(k8s)
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set() and i < 3000:
            svc = k8s.service("ns", f"c{i % 50}", [f"10.9.0.{i % 50 + 1}"], k8s.HTTP)
            if i % 3 == 2:
                zone.on_service(svc, None)
            else:
                zone.on_service(None, svc)
            i += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        checked = 0
        while writer.is_alive() and checked < 2000:
            snap = zone.snapshot()
            for ip, keys in snap.cluster_ip_index.items():
                for key in keys:
                    record = snap.services.get(key)
                    assert record is not None and (ip, 4) in record.cluster_ips
            checked += 1
    finally:
        stop.set()
        writer.join()
