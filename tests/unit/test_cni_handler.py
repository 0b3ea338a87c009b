"""CNI verb semantics in the agent, without root: a real IpamStore in a temp dir and an in-memory
datapath. Assertions are on final state (what is wired, what is reserved), not on call lists."""

from __future__ import annotations

import json

import pytest

from netplane.cni.errors import CniError
from netplane.cni.handler import CniHandler, NodeNetwork
from netplane.cni.ipam import IpamStore
from netplane.cni.wiring import WiredPod, host_veth_name
from netplane.metrics import Registry


class FakeDatapath:
    def __init__(self) -> None:
        self.wired: dict[tuple[str, str], str] = {}  # (cid, ifname) -> ip
        self.fail_next_wire = False

    def wire(self, req, alloc, mtu):
        if self.fail_next_wire:
            self.fail_next_wire = False
            raise CniError(102, "injected wiring failure", "")
        if (req.container_id, req.ifname) in self.wired:
            raise CniError(102, f"interface {req.ifname} exists", "")
        self.wired[(req.container_id, req.ifname)] = alloc.ip
        return WiredPod(host_ifname=host_veth_name(req.container_id, req.ifname), host_mac="02:00:00:00:00:01",
                        pod_mac="02:00:00:00:00:02", mtu=mtu)

    def unwire(self, req):
        self.wired.pop((req.container_id, req.ifname), None)

    def check(self, req, alloc):
        if self.wired.get((req.container_id, req.ifname)) != alloc.ip:
            raise CniError(103, "not wired", "")


CONF = {"cniVersion": "1.1.0", "name": "netplane", "type": "netplane"}


def env(command: str, cid: str = "c1", ifname: str = "eth0") -> dict[str, str]:
    e = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    if command in ("ADD", "DEL", "CHECK"):
        e.update(CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_NETNS="/var/run/netns/x")
    return e


@pytest.fixture
def agent(tmp_path):
    dp = FakeDatapath()
    net = NodeNetwork(ipam=IpamStore(str(tmp_path / "ipam"), "10.244.1.0/24"), mtu=1450, ready_reason=None)
    return CniHandler(dp, net, Registry()), dp, net


def test_add_returns_a_spec_result_and_wires_the_pod(agent):
    handler, dp, net = agent
    code, out = handler.handle(env("ADD"), json.dumps(CONF).encode())
    assert code == 0, out
    assert out["cniVersion"] == "1.1.0"
    ip = out["ips"][0]["address"].split("/")[0]
    assert dp.wired == {("c1", "eth0"): ip}
    assert out["ips"][0]["gateway"] == "10.244.1.1"
    assert [a.ip for a in net.ipam.allocations()] == [ip]
    assert any(i.get("sandbox") for i in out["interfaces"])


def test_failed_wiring_gives_the_ip_back(agent):
    handler, dp, net = agent
    dp.fail_next_wire = True
    code, out = handler.handle(env("ADD"), json.dumps(CONF).encode())
    assert code == 1 and out["code"] == 102
    assert net.ipam.allocations() == [] and dp.wired == {}


def test_del_is_idempotent_and_releases(agent):
    handler, dp, net = agent
    handler.handle(env("ADD"), json.dumps(CONF).encode())
    for _ in range(2):
        code, out = handler.handle(env("DEL"), json.dumps(CONF).encode())
        assert (code, out) == (0, None)
    assert net.ipam.allocations() == [] and dp.wired == {}
    # DEL of something never added is fine too.
    assert handler.handle(env("DEL", cid="never"), json.dumps(CONF).encode())[0] == 0


def test_check_and_gc(agent):
    handler, dp, net = agent
    for cid in ("a", "b", "c"):
        assert handler.handle(env("ADD", cid=cid), json.dumps(CONF).encode())[0] == 0
    assert handler.handle(env("CHECK", cid="a"), json.dumps(CONF).encode()) == (0, None)
    code, out = handler.handle(env("CHECK", cid="zzz"), json.dumps(CONF).encode())
    assert code == 1 and out["code"] == 103
    gc = {**CONF, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
          "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]}
    assert handler.handle(env("GC"), json.dumps(gc).encode()) == (0, None)
    assert sorted(a.container_id for a in net.ipam.allocations()) == ["a", "b"]
    assert sorted(k[0] for k in dp.wired) == ["a", "b"]


def test_not_ready_means_try_again_later_and_status_50(agent):
    handler, dp, net = agent
    net.ready_reason = "waiting for node podCIDR"
    code, out = handler.handle(env("ADD"), json.dumps(CONF).encode())
    assert code == 1 and out["code"] == 11 and "podCIDR" in out["msg"]
    code, out = handler.handle(env("STATUS"), json.dumps(CONF).encode())
    assert code == 1 and out["code"] == 50
    net.ready_reason = None
    assert handler.handle(env("STATUS"), json.dumps(CONF).encode()) == (0, None)


def test_bad_input_gets_spec_codes_and_changes_nothing(agent):
    handler, dp, net = agent
    code, out = handler.handle({"CNI_COMMAND": "ADD"}, json.dumps(CONF).encode())
    assert code == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]
    code, out = handler.handle(env("ADD"), b"{not json")
    assert code == 1 and out["code"] == 6
    code, out = handler.handle(env("ADD"), json.dumps({"cniVersion": "1.1.0"}).encode())
    assert code == 1 and out["code"] == 7
    assert net.ipam.allocations() == [] and dp.wired == {}


def test_metrics_count_requests_by_verb_and_result(agent):
    handler, dp, net = agent
    handler.handle(env("ADD"), json.dumps(CONF).encode())
    handler.handle(env("ADD", cid="x"), b"{")
    text = handler.requests.render()
    assert 'netplane_cni_requests_total{verb="ADD",result="success"} 1' in text
    assert 'netplane_cni_requests_total{verb="ADD",result="error6"} 1' in text
    assert handler.latency.count("ADD") == 2
