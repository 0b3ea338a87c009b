"""The overlay's pure half: annotations, Nodes → peers, and the desired-vs-observed plan."""

from __future__ import annotations

import logging

import pytest

from netplane.cni.overlay import (
    NODE_IP_ANNOTATION,
    VTEP_MAC_ANNOTATION,
    Observed,
    OverlayError,
    OverlaySyncError,
    Peer,
    PeerSteps,
    Plan,
    VxlanOverlay,
    compute_peers,
    device_name,
    node_annotations,
    normalize_mac,
    own_vtep_mac,
    plan,
    validate_peers,
)
from netplane.k8s.objects import Node

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
MAC_C = "02:00:00:00:00:0c"


def node(name: str, cidr: str | None, mac: str | None = None, node_ip: str | None = None,
         internal: str | None = None, **extra: str) -> Node:
    annotations = dict(extra)
    if mac is not None:
        annotations[VTEP_MAC_ANNOTATION] = mac
    if node_ip is not None:
        annotations[NODE_IP_ANNOTATION] = node_ip
    addresses = [{"type": "Hostname", "address": name}]
    if internal is not None:
        addresses.append({"type": "InternalIP", "address": internal})
    return Node.from_dict({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr} if cidr else {},
        "status": {"addresses": addresses},
    })


def peer(name: str, ip: str, cidr: str, mac: str) -> Peer:
    return Peer(node=name, node_ip=ip, pod_cidr=cidr, vtep_mac=mac)


# ------------------------------------------------------------------------ annotations and MACs


def test_node_annotations_are_normalized():
    assert node_annotations("02-AB-cd-00-00-01", " 172.31.77.2") == {
        "netplane.io/vtep-mac": "02:ab:cd:00:00:01",
        "netplane.io/node-ip": "172.31.77.2",
    }


@pytest.mark.parametrize("mac", ["", "02:00:00:00:00", "zz:00:00:00:00:01", "01:00:5e:00:00:01",
                                 "00:00:00:00:00:00", "02:00:00:00:00:01:02", 7])
def test_bad_macs_are_rejected(mac):
    with pytest.raises(ValueError):
        normalize_mac(mac)


def test_node_annotations_reject_bad_ip():
    with pytest.raises(ValueError, match="not an IP"):
        node_annotations(MAC_A, "300.1.1.1")
    with pytest.raises(ValueError, match="not IPv4"):
        node_annotations(MAC_A, "fd00::1")
    for ip in ("0.0.0.0", "127.0.0.1", "239.1.1.1", "255.255.255.255"):
        with pytest.raises(ValueError, match="not a unicast host address"):
            node_annotations(MAC_A, ip)


def test_own_vtep_mac_reads_the_published_annotation():
    assert own_vtep_mac(node("a", "10.244.1.0/24", mac="02:00:00:00:00:AA")) == "02:00:00:00:00:aa"
    assert own_vtep_mac(node("a", "10.244.1.0/24")) is None
    assert own_vtep_mac(node("a", "10.244.1.0/24", mac="garbage")) is None


def test_peer_gateway_is_the_network_address():
    assert peer("b", "172.31.77.3", "10.244.2.0/24", MAC_B).gateway == "10.244.2.0"


def test_device_name_fits_ifnamsiz():
    assert device_name(1) == "np.vx1"
    assert len(device_name(16_777_215)) <= 15


# ------------------------------------------------------------------------------ compute_peers


def test_compute_peers_skips_self_and_reads_annotations():
    nodes = [
        node("a", "10.244.1.0/24", MAC_A, "172.31.77.2"),
        node("b", "10.244.2.0/24", MAC_B, "172.31.77.3"),
        node("c", "10.244.3.0/24", MAC_C, "172.31.77.4"),
    ]
    assert compute_peers(nodes, "a") == [
        peer("b", "172.31.77.3", "10.244.2.0/24", MAC_B),
        peer("c", "172.31.77.4", "10.244.3.0/24", MAC_C),
    ]


def test_node_ip_annotation_wins_over_internal_ip_which_is_the_fallback():
    nodes = [
        node("b", "10.244.2.0/24", MAC_B, node_ip="172.31.77.3", internal="192.168.0.3"),
        node("c", "10.244.3.0/24", MAC_C, internal="192.168.0.4"),
    ]
    assert [(p.node, p.node_ip) for p in compute_peers(nodes, "a")] == [
        ("b", "172.31.77.3"), ("c", "192.168.0.4")]


def test_nodes_that_cannot_be_peers_are_skipped_with_a_reason(caplog):
    nodes = [
        node("no-cidr", None, MAC_A, "172.31.77.2"),
        node("no-annotation", "10.244.2.0/24", internal="172.31.77.3"),
        node("bad-mac", "10.244.3.0/24", "not-a-mac", "172.31.77.4"),
        node("multicast-mac", "10.244.4.0/24", "01:00:5e:00:00:01", "172.31.77.5"),
        node("bad-ip", "10.244.5.0/24", "02:00:00:00:00:05", "172.31.77.999"),
        node("v6-ip", "10.244.6.0/24", "02:00:00:00:00:06", "fd00::6"),
        node("no-ip", "10.244.7.0/24", "02:00:00:00:00:07"),
        node("v6-only-cidr", "fd00:10:244::/64", "02:00:00:00:00:08", "172.31.77.8"),
        node("ok", "10.244.9.0/24", "02:00:00:00:00:09", "172.31.77.9"),
    ]
    with caplog.at_level(logging.DEBUG, logger="netplane.cni.overlay"):
        peers = compute_peers(nodes, "self")
    assert [p.node for p in peers] == ["ok"]
    log = caplog.text
    warned = {r.getMessage().split()[2] for r in caplog.records if r.levelno == logging.WARNING}
    assert warned == {"bad-mac", "multicast-mac", "bad-ip", "v6-ip"}  # missing data: debug only
    assert "no-cidr is not a peer: no IPv4 podCIDR" in log
    assert "no-annotation is not a peer: no netplane.io/vtep-mac annotation" in log
    assert "bad-mac is not a peer: bad netplane.io/vtep-mac" in log
    assert "multicast-mac is not a peer: bad netplane.io/vtep-mac" in log
    assert "bad-ip is not a peer: bad netplane.io/node-ip" in log
    assert "v6-ip is not a peer: bad netplane.io/node-ip" in log
    assert "no-ip is not a peer: no netplane.io/node-ip annotation and no IPv4 InternalIP" in log
    assert "v6-only-cidr is not a peer: no IPv4 podCIDR" in log


def test_dual_stack_node_uses_its_ipv4_cidr_and_internal_ip():
    n = Node.from_dict({
        "metadata": {"name": "b", "annotations": {VTEP_MAC_ANNOTATION: MAC_B}},
        "spec": {"podCIDRs": ["fd00:10:244:2::/64", "10.244.2.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "fd00::3"},
                                 {"type": "InternalIP", "address": "172.31.77.3"}]},
    })
    assert compute_peers([n], "a") == [peer("b", "172.31.77.3", "10.244.2.0/24", MAC_B)]


def test_changed_ip_or_mac_gives_a_different_peer():
    before = compute_peers([node("b", "10.244.2.0/24", MAC_B, "172.31.77.3")], "a")
    moved = compute_peers([node("b", "10.244.2.0/24", MAC_B, "172.31.77.33")], "a")
    new_mac = compute_peers([node("b", "10.244.2.0/24", "02:00:00:00:00:bb", "172.31.77.3")], "a")
    assert before != moved and before != new_mac
    assert moved[0].node_ip == "172.31.77.33"
    assert new_mac[0].vtep_mac == "02:00:00:00:00:bb"


def test_conflicting_nodes_keep_the_first_by_name(caplog):
    nodes = [
        node("a", "10.244.1.0/24", MAC_A, "172.31.77.2"),
        node("b", "10.244.2.0/24", MAC_B, "172.31.77.3"),
        node("b2", "10.244.2.0/25", "02:00:00:00:00:b2", "172.31.77.13"),  # overlaps b
        node("c", "10.244.3.0/24", MAC_B, "172.31.77.4"),                  # b's MAC
        node("d", "10.244.1.128/25", "02:00:00:00:00:0d", "172.31.77.5"),  # overlaps self
    ]
    with caplog.at_level(logging.WARNING, logger="netplane.cni.overlay"):
        peers = compute_peers(nodes, "a")
    assert [p.node for p in peers] == ["b"]
    assert "b2: podCIDR 10.244.2.0/25 overlaps peer b's" in caplog.text
    assert "c: VTEP MAC 02:00:00:00:00:0b already used by peer b" in caplog.text
    assert "d: podCIDR 10.244.1.128/25 overlaps this node's 10.244.1.0/24" in caplog.text


def test_validate_peers_normalizes_and_rejects_own_mac():
    raw = [peer("b", "172.31.77.3", "10.244.2.7/24", "02:00:00:00:00:0B"),
           peer("c", "172.31.77.4", "10.244.3.0/24", MAC_A),
           peer("d", "nope", "10.244.4.0/24", MAC_C)]
    valid, skipped = validate_peers(raw, "10.244.1.0/24", own_mac=MAC_A)
    assert valid == [peer("b", "172.31.77.3", "10.244.2.0/24", MAC_B)]
    assert len(skipped) == 2 and "this node's own" in skipped[0] and "not an IP" in skipped[1]


# -------------------------------------------------------------------------------------- plan

B = peer("b", "172.31.77.3", "10.244.2.0/24", MAC_B)
C = peer("c", "172.31.77.4", "10.244.3.0/24", MAC_C)


def converged(*peers: Peer) -> Observed:
    return Observed(
        neighbours={p.gateway: p.vtep_mac for p in peers},
        fdb=frozenset((p.vtep_mac, p.node_ip) for p in peers),
        routes={p.pod_cidr: p.gateway for p in peers},
    )


def test_plan_adds_every_step_for_new_peers_in_name_order():
    p = plan([C, B], Observed())
    assert p.replace == (PeerSteps(B, True, True, True), PeerSteps(C, True, True, True))
    assert (p.remove_routes, p.remove_fdb, p.remove_neighbours) == ((), (), ())
    assert p.writes == 6 and not p.empty


def test_plan_of_converged_state_is_empty():
    p = plan([B, C], converged(B, C))
    assert p == Plan() and p.empty and p.writes == 0


def test_changed_mac_replaces_neighbour_and_fdb_and_removes_the_old_fdb_entry():
    new_b = peer("b", B.node_ip, B.pod_cidr, "02:00:00:00:00:bb")
    p = plan([new_b, C], converged(B, C))
    assert p.replace == (PeerSteps(new_b, neighbour=True, fdb=True, route=False),)
    assert p.remove_fdb == ((MAC_B, "172.31.77.3"),)  # flannel leaves this one behind
    assert p.remove_routes == () and p.remove_neighbours == ()


def test_changed_node_ip_replaces_only_the_fdb_entry():
    moved = peer("b", "172.31.77.33", B.pod_cidr, B.vtep_mac)
    p = plan([moved], converged(B))
    assert p.replace == (PeerSteps(moved, neighbour=False, fdb=True, route=False),)
    assert p.remove_fdb == ((MAC_B, "172.31.77.3"),)


def test_removed_node_loses_route_fdb_and_neighbour():
    p = plan([B], converged(B, C))
    assert p.replace == ()
    assert p.remove_routes == ("10.244.3.0/24",)
    assert p.remove_fdb == ((MAC_C, "172.31.77.4"),)
    assert p.remove_neighbours == ("10.244.3.0",)
    assert p.writes == 3


def test_repair_only_rewrites_what_is_missing():
    observed = converged(B, C)
    broken = Observed(
        neighbours={k: v for k, v in observed.neighbours.items() if k != C.gateway},
        fdb=observed.fdb,
        routes={k: v for k, v in observed.routes.items() if k != C.pod_cidr},
    )
    assert plan([B, C], broken).replace == (PeerSteps(C, neighbour=True, fdb=False, route=True),)


def test_non_permanent_or_stale_neighbours_and_wrong_routes_are_fixed():
    observed = Observed(
        neighbours={B.gateway: None, "10.244.9.0": MAC_C, "10.244.8.0": None},
        fdb=frozenset({(MAC_B, B.node_ip), ("00:00:00:00:00:00", "172.31.77.99")}),
        routes={B.pod_cidr: None, "10.244.9.0/24": "10.244.9.0"},
    )
    p = plan([B], observed)
    assert p.replace == (PeerSteps(B, neighbour=True, fdb=False, route=True),)
    assert p.remove_neighbours == ("10.244.8.0", "10.244.9.0")
    assert p.remove_fdb == (("00:00:00:00:00:00", "172.31.77.99"),)
    assert p.remove_routes == ("10.244.9.0/24",)


def test_pod_cidr_moving_to_another_node_is_a_replace_not_a_remove():
    d = peer("d", "172.31.77.5", C.pod_cidr, "02:00:00:00:00:0d")
    p = plan([B, d], converged(B, C))
    assert p.replace == (PeerSteps(d, neighbour=True, fdb=True, route=False),)
    assert p.remove_fdb == ((MAC_C, C.node_ip),)
    assert p.remove_routes == () and p.remove_neighbours == ()


# ---------------------------------------------------------------------- constructor checks


def test_overlay_constructor_validates_and_defaults():
    o = VxlanOverlay(mtu=1450, local_ip="172.31.77.2", pod_cidr="10.244.1.0/24")
    assert (o.device, o.vni, o.port, o.address) == ("np.vx1", 1, 8472, "10.244.1.0")
    assert VxlanOverlay(vni=42, mtu=1450, local_ip="172.31.77.2",
                        pod_cidr="10.244.1.0/24").device == "np.vx42"
    for bad in (dict(vni=0), dict(port=0), dict(mtu=20), dict(local_ip="fd00::1"),
                dict(pod_cidr="nope"), dict(device="a-much-too-long-name")):
        kwargs = dict(mtu=1450, local_ip="172.31.77.2", pod_cidr="10.244.1.0/24") | bad
        with pytest.raises(ValueError):
            VxlanOverlay(**kwargs)


def test_ensure_device_rejects_a_bad_mac_before_touching_netlink():
    o = VxlanOverlay(mtu=1450, local_ip="172.31.77.2", pod_cidr="10.244.1.0/24", netns="/nonexistent")
    with pytest.raises(OverlayError, match="not a MAC address"):
        o.ensure_device("garbage")
    assert o.mac is None


def test_sync_error_lists_every_failure():
    e = OverlaySyncError(["peer b: fdb failed: x", "removing route y: z"])
    assert e.errors == ("peer b: fdb failed: x", "removing route y: z")
    assert "2 error(s)" in str(e)
