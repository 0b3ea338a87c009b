"""netplane.cni.wiring without root: host veth names, request validation, namespace-path checks
(they fail before any netlink call). The kernel side is in tests/netns/test_cni_wiring.py."""

from __future__ import annotations

import hashlib
import os

import pytest

from netplane.cni import errors as codes
from netplane.cni import wiring
from netplane.cni.errors import CniError
from netplane.cni.wiring import host_veth_name, is_host_veth_name


def test_host_veth_name_is_np_plus_11_hex_of_sha256():
    cid = "0123456789abcdef" * 4
    expected = "np" + hashlib.sha256(f"{cid}/eth0".encode()).hexdigest()[:11]
    assert host_veth_name(cid, "eth0") == expected
    assert len(expected) == 13 <= 15  # IFNAMSIZ - 1


def test_host_veth_name_is_deterministic_and_keyed_on_both_parts():
    assert host_veth_name("c1", "eth0") == host_veth_name("c1", "eth0")
    names = {host_veth_name("c1", "eth0"), host_veth_name("c1", "net1"), host_veth_name("c2", "eth0")}
    assert len(names) == 3
    assert host_veth_name("c1", "eth0") == "np" + hashlib.sha256(b"c1/eth0").hexdigest()[:11]


@pytest.mark.parametrize("name, ours", [
    (host_veth_name("c1", "eth0"), True),
    ("np.vx1", False),              # the overlay device shares the prefix
    ("np0123456789", False),        # too short
    ("np0123456789ab", False),      # too long
    ("npABCDEF01234", False),       # upper case is never produced
    ("eth0", False),
])
def test_is_host_veth_name(name, ours):
    assert is_host_veth_name(name) is ours


@pytest.mark.parametrize("kwargs, fragment", [
    ({"ifname": ""}, "invalid interface name ''"),
    ({"ifname": "a" * 16}, "invalid interface name"),
    ({"ifname": "eth/0"}, "invalid interface name"),
    ({"ifname": ".."}, "invalid interface name"),
    ({"ip": "10.244.1.256"}, "ip '10.244.1.256' is not an IP address"),
    ({"gateway": "fd00::1"}, "gateway 'fd00::1' is not an IPv4 address"),
    ({"gateway": "10.244.1.2"}, "ip and gateway are both 10.244.1.2"),
    ({"mtu": 0}, "mtu 0 is outside 68..65535"),
    ({"mtu": 70000}, "mtu 70000 is outside"),
])
def test_invalid_requests_fail_before_touching_anything(kwargs, fragment):
    args = {"netns_path": "/run/netns/never-opened", "ifname": "eth0", "container_id": "c1",
            "ip": "10.244.1.2", "gateway": "10.244.1.1", "mtu": 1450, **kwargs}
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(**args, node_netns="never-opened-either")
    assert exc.value.code == codes.WIRING_FAILURE
    assert fragment in exc.value.msg


def test_missing_pod_netns_is_invalid_netns_naming_the_path(tmp_path):
    missing = str(tmp_path / "no-such-netns")
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(missing, "eth0", "c1", "10.244.1.2", "10.244.1.1", 1450, node_netns="unused")
    assert exc.value.code == codes.INVALID_NETNS
    assert f"CNI_NETNS {missing} does not exist" in exc.value.msg
    assert not os.path.exists(missing)


def test_a_plain_file_is_not_a_network_namespace(tmp_path):
    plain = tmp_path / "netns"
    plain.write_text("")
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(str(plain), "eth0", "c1", "10.244.1.2", "10.244.1.1", 1450, node_netns="unused")
    assert exc.value.code == codes.INVALID_NETNS and "is not a network namespace" in exc.value.msg


def test_empty_netns_path_is_invalid_netns():
    with pytest.raises(CniError) as exc:
        wiring.wire_pod("", "eth0", "c1", "10.244.1.2", "10.244.1.1", 1450, node_netns="unused")
    assert exc.value.code == codes.INVALID_NETNS and "CNI_NETNS" in exc.value.msg


def test_netns_names_resolve_under_run_netns():
    assert wiring._netns_path("node-1") == "/run/netns/node-1"
    assert wiring._netns_path("/proc/123/ns/net") == "/proc/123/ns/net"
