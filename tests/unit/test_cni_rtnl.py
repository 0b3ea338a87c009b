"""netplane.cni.rtnl without root: message encoding and decoding, and the request/ack loop
against a scripted socket. The kernel side is covered by tests/netns/test_cni_wiring.py."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from netplane.cni import rtnl
from netplane.cni.rtnl import (
    IFF_UP,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    RTM_NEWLINK,
    VETH_INFO_PEER,
    Rtnl,
    RtnlError,
    attr,
    parse_attrs,
)

IFINFO = struct.Struct("=BxHiII")
NLMSGHDR = struct.Struct("=IHHII")


def u32(b: bytes) -> int:
    return struct.unpack("=I", b)[0]


def test_attr_is_padded_to_four_bytes() -> None:
    a = attr(3, b"abcde")
    assert len(a) == 12 and a[:4] == struct.pack("=HH", 9, 3) and a[4:9] == b"abcde" and a[9:] == b"\0\0\0"
    assert parse_attrs(a + attr(4, b"\x01\x00\x00\x00"), 0) == {3: b"abcde", 4: b"\x01\x00\x00\x00"}


def test_parse_attrs_stops_at_a_truncated_attribute() -> None:
    data = attr(1, b"ok!!") + struct.pack("=HH", 200, 2) + b"short"
    assert parse_attrs(data, 0) == {1: b"ok!!"}


def test_veth_message_layout() -> None:
    body = rtnl.encode_veth("np0123456789a", "eth0", 1450, 7)
    _family, _type, index, flags, change = IFINFO.unpack_from(body)
    assert (index, flags, change) == (0, IFF_UP, IFF_UP)  # the host end is created up
    top = parse_attrs(body, IFINFO.size)
    assert top[IFLA_IFNAME] == b"np0123456789a\0" and u32(top[IFLA_MTU]) == 1450
    info = parse_attrs(top[IFLA_LINKINFO], 0)
    assert info[IFLA_INFO_KIND] == b"veth\0"
    peer = parse_attrs(info[IFLA_INFO_DATA], 0)[VETH_INFO_PEER]
    _f, _t, p_index, p_flags, p_change = IFINFO.unpack_from(peer)
    # The peer cannot be created up (veth_open would fail with ENOTCONN before the pair is joined).
    assert (p_index, p_flags, p_change) == (0, 0, 0)
    peer_attrs = parse_attrs(peer, IFINFO.size)
    assert peer_attrs[IFLA_IFNAME] == b"eth0\0" and u32(peer_attrs[IFLA_MTU]) == 1450
    assert u32(peer_attrs[IFLA_NET_NS_FD]) == 7


def test_address_flags_beyond_eight_bits_go_in_ifa_flags() -> None:
    body = rtnl.encode_addr(5, "10.244.1.1", 32, 0x200)
    family, prefixlen, flags, _scope, index = struct.unpack_from("=BBBBI", body)
    assert (family, prefixlen, flags, index) == (socket.AF_INET, 32, 0, 5)
    attrs = parse_attrs(body, 8)
    assert attrs[rtnl.IFA_LOCAL] == attrs[rtnl.IFA_ADDRESS] == bytes([10, 244, 1, 1])
    assert u32(attrs[rtnl.IFA_FLAGS]) == 0x200
    assert rtnl.IFA_FLAGS not in parse_attrs(rtnl.encode_addr(5, "10.0.0.1", 32), 8)


def test_route_messages() -> None:
    default = rtnl.encode_route("0.0.0.0", 0, 9, gateway="10.244.1.1")
    fields = struct.unpack_from("=BBBBBBBBI", default)
    assert fields[:8] == (socket.AF_INET, 0, 0, 0, 254, 4, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST)
    attrs = parse_attrs(default, 12)
    assert rtnl.RTA_DST not in attrs and attrs[rtnl.RTA_GATEWAY] == bytes([10, 244, 1, 1])
    assert u32(attrs[rtnl.RTA_OIF]) == 9
    host = rtnl.encode_route("10.244.1.7", 32, 3, scope=rtnl.RT_SCOPE_LINK, proto=78)
    fields = struct.unpack_from("=BBBBBBBBI", host)
    assert (fields[1], fields[5], fields[6]) == (32, 78, rtnl.RT_SCOPE_LINK)
    assert parse_attrs(host, 12)[rtnl.RTA_DST] == bytes([10, 244, 1, 7])


def link_body(index: int, name: str, mac: bytes, oper: int) -> bytes:
    return (IFINFO.pack(0, 1, index, IFF_UP, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
            + attr(rtnl.IFLA_ADDRESS, mac) + attr(IFLA_MTU, struct.pack("=I", 1450))
            + attr(rtnl.IFLA_OPERSTATE, bytes([oper])))


def test_parse_link() -> None:
    link = rtnl.parse_link(link_body(4, "eth0", bytes.fromhex("0a580af40102"), rtnl.IF_OPER_UP))
    assert (link.index, link.name, link.mac, link.mtu, link.oper_up) == (4, "eth0", "0a:58:0a:f4:01:02", 1450, True)
    assert not rtnl.parse_link(link_body(4, "eth0", b"\0" * 6, 2)).oper_up


def test_parse_neigh_ipv4_only() -> None:
    ipv4 = struct.pack("=BxxxiHBB", socket.AF_INET, 3, 0x02, 0, 1) + attr(rtnl.NDA_DST, bytes([10, 0, 0, 1])) \
        + attr(rtnl.NDA_LLADDR, bytes.fromhex("aabbccddeeff"))
    assert rtnl.parse_neigh(ipv4) == rtnl.Neighbour(3, "10.0.0.1", "aa:bb:cc:dd:ee:ff", 0x02)
    ipv6 = struct.pack("=BxxxiHBB", socket.AF_INET6, 3, 0x02, 0, 1)
    assert rtnl.parse_neigh(ipv6) is None


# -- the request loop against a scripted socket ----------------------------------------------------


class ScriptedSocket:
    """Records what is sent; answers each send with the datagrams `answer(seq)` returns."""

    def __init__(self, answer):
        self.answer = answer
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[int, int]) -> int:
        assert addr == (0, 0)
        self.sent.append(data)
        seq = NLMSGHDR.unpack_from(data)[3]
        self.queue.extend(self.answer(seq))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.queue.pop(0)

    def close(self) -> None:
        pass


def nlmsg(kind: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    data = NLMSGHDR.pack(NLMSGHDR.size + len(payload), kind, flags, seq, 0) + payload
    return data + b"\0" * (-len(data) % 4)


def ack(seq: int, err: int = 0) -> bytes:
    return nlmsg(rtnl.NLMSG_ERROR, seq, struct.pack("=i", err) + b"\0" * 16)


def test_request_sends_with_ack_and_returns_on_the_ack() -> None:
    sock = ScriptedSocket(lambda seq: [ack(seq)])
    r = Rtnl(sock)  # type: ignore[arg-type]
    r.add_veth("np0", "eth0", 1450, 5)
    (sent,) = sock.sent
    _len, kind, flags, seq, _pid = NLMSGHDR.unpack_from(sent)
    assert kind == RTM_NEWLINK and flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert sent[NLMSGHDR.size:] == rtnl.encode_veth("np0", "eth0", 1450, 5)


def test_negative_ack_raises_with_the_kernel_errno() -> None:
    r = Rtnl(ScriptedSocket(lambda seq: [ack(seq, -errno.EEXIST)]))  # type: ignore[arg-type]
    with pytest.raises(RtnlError) as exc:
        r.add_route("0.0.0.0", 0, 3, gateway="10.0.0.1")
    assert exc.value.errno == errno.EEXIST and "File exists" in str(exc.value)
    assert "add route 0.0.0.0/0" in str(exc.value)


def test_missing_link_is_none_and_delete_of_nothing_is_false() -> None:
    r = Rtnl(ScriptedSocket(lambda seq: [ack(seq, -errno.ENODEV)]))  # type: ignore[arg-type]
    assert r.get_link("nope") is None
    assert r.del_link("nope") is False
    r = Rtnl(ScriptedSocket(lambda seq: [ack(seq, -errno.EPERM)]))  # type: ignore[arg-type]
    with pytest.raises(RtnlError):
        r.del_link("x")


def test_stale_answers_are_skipped_and_dumps_end_at_done() -> None:
    n1 = struct.pack("=BxxxiHBB", socket.AF_INET, 3, 0x02, 0, 1) + attr(rtnl.NDA_DST, bytes([10, 0, 0, 1]))
    n2 = struct.pack("=BxxxiHBB", socket.AF_INET, 4, 0x02, 0, 1) + attr(rtnl.NDA_DST, bytes([10, 0, 0, 2]))

    def answer(seq: int) -> list[bytes]:
        return [ack(seq - 1, -errno.EINVAL),  # a late answer to something else: ignored
                nlmsg(rtnl.RTM_NEWNEIGH, seq, n1, rtnl.NLM_F_MULTI) + nlmsg(rtnl.RTM_NEWNEIGH, seq, n2, rtnl.NLM_F_MULTI),
                nlmsg(rtnl.NLMSG_DONE, seq, struct.pack("=i", 0))]

    r = Rtnl(ScriptedSocket(answer))  # type: ignore[arg-type]
    # only ifindex 3's entry: older kernels do not filter dumps by ifindex
    assert [n.dst for n in r.neighbours(3)] == ["10.0.0.1"]


def test_get_link_parses_the_answer() -> None:
    body = link_body(9, "np0123456789a", bytes.fromhex("020000000001"), rtnl.IF_OPER_UP)
    r = Rtnl(ScriptedSocket(lambda seq: [nlmsg(RTM_NEWLINK, seq, body) + ack(seq)]))  # type: ignore[arg-type]
    link = r.get_link("np0123456789a")
    assert link is not None and (link.index, link.mac) == (9, "02:00:00:00:00:01")


def test_in_netns_reports_errors_of_the_thread(tmp_path) -> None:
    not_a_netns = tmp_path / "plain-file"
    not_a_netns.write_text("")
    fd = os.open(not_a_netns, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as exc:
            rtnl.in_netns(fd, lambda: "never")
        assert exc.value.errno == errno.EINVAL
    finally:
        os.close(fd)
