"""The overlay fast path's map entries (netplane.cni.fastpath), byte for byte as
ebpf/overlay_fastpath.bpf.c reads them; the programs themselves are exercised with real packets
in tests/netns/test_cni_sandbox.py."""

from __future__ import annotations

import socket
import struct

import pytest

from netplane.cni.fastpath import encode_local_pod, encode_overlay_dev, encode_remote_cidr, encode_remote_node


def test_local_pod_is_ip_key_and_ifindex_then_two_macs():
    key, value = encode_local_pod("10.244.1.7", 42, "02:00:00:00:00:07", "aa:bb:cc:dd:ee:ff")
    assert key == socket.inet_aton("10.244.1.7")
    assert len(value) == 16  # struct local_pod
    assert struct.unpack_from("=I", value)[0] == 42
    assert value[4:10] == bytes.fromhex("020000000007") and value[10:16] == bytes.fromhex("aabbccddeeff")


def test_remote_cidr_key_is_prefixlen_then_network_in_network_order():
    assert encode_remote_cidr("10.244.2.0/24") == struct.pack("=I", 24) + bytes([10, 244, 2, 0])
    with pytest.raises(ValueError):
        encode_remote_cidr("10.244.2.1/24")  # host bits set: not a podCIDR


def test_remote_node_and_overlay_dev_are_padded_like_the_c_structs():
    assert encode_remote_node("02:00:00:00:00:02") == bytes.fromhex("020000000002") + b"\0\0"
    dev = encode_overlay_dev(7, "02:00:00:00:00:01")
    assert len(dev) == 12 and struct.unpack_from("=I", dev)[0] == 7 and dev[4:10] == bytes.fromhex("020000000001")


@pytest.mark.parametrize("mac", ["", "02:00:00:00:00", "zz:00:00:00:00:00", "02:00:00:00:00:00:01"])
def test_bad_mac_is_a_clear_error(mac):
    with pytest.raises(ValueError):
        encode_remote_node(mac)


def test_counters_read_from_their_owner_are_exposed_as_counters():
    from netplane.metrics import CounterFunc, Registry

    registry = Registry()
    values = {"to_overlay": 3}
    CounterFunc(registry, "netplane_overlay_fastpath_packets_total", "help", ("what",),
                fn=lambda: [((k,), v) for k, v in values.items()])
    values["to_overlay"] = 5  # read at scrape time
    text = registry.render().decode()
    assert "# TYPE netplane_overlay_fastpath_packets_total counter" in text
    assert 'netplane_overlay_fastpath_packets_total{what="to_overlay"} 5' in text
