"""netplane.cni.wiring in real namespaces: a node namespace and pod namespaces, real packets.

Every test makes its own "node" with ``netns_factory`` and passes it as ``node_netns``, so the
wiring never touches the namespace pytest runs in (the root one); ``test_agent_mode`` runs the
wiring *inside* the node namespace with ``node_netns=None``, the way the agent does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netplane.cni import errors as codes
from netplane.cni import wiring
from netplane.cni.errors import CniError
from netplane.cni.wiring import RTPROT_NETPLANE, host_veth_name

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

RunIn = Callable[..., subprocess.CompletedProcess[str]]
GW = "10.244.1.1"
MTU = 1450
TUNING = "/usr/lib/cni/tuning"


def path(ns: str) -> str:
    return f"/run/netns/{ns}"


def links(run_in: RunIn, ns: str) -> dict[str, dict[str, Any]]:
    return {l["ifname"]: l for l in json.loads(run_in(ns, "ip", "-j", "-d", "link", "show").stdout)}


def addrs(run_in: RunIn, ns: str, dev: str) -> list[dict[str, Any]]:
    out = json.loads(run_in(ns, "ip", "-j", "-4", "addr", "show", "dev", dev).stdout)
    return out[0]["addr_info"] if out else []


def routes(run_in: RunIn, ns: str, *sel: str) -> list[dict[str, Any]]:
    return json.loads(run_in(ns, "ip", "-j", "-4", "route", "show", *sel).stdout)


def sysctl(run_in: RunIn, ns: str, key: str) -> str:
    return run_in(ns, "cat", f"/proc/sys/{key.replace('.', '/')}").stdout.strip()


def assert_node_clean(run_in: RunIn, node: str) -> None:
    """No host veth and no netplane route left in the node namespace."""
    left = [name for name in links(run_in, node) if name.startswith("np")]
    assert left == [], f"host veths left behind: {left}"
    assert routes(run_in, node, "proto", str(RTPROT_NETPLANE)) == []


@pytest.fixture
def node(netns_factory: Callable[..., str]) -> str:
    return netns_factory("node")


@pytest.fixture
def wired() -> Iterator[list[tuple[str, str, str, str | None]]]:
    """Pods a test wired; unwired at teardown even when the test fails (the namespaces go too)."""
    made: list[tuple[str, str, str, str | None]] = []
    yield made
    for netns, ifname, cid, node_ns in made:
        wiring.unwire_pod(netns, ifname, cid, node_netns=node_ns)


def wire(wired: list, pod_ns: str, cid: str, ip: str, node: str, ifname: str = "eth0",
         mtu: int = MTU) -> wiring.WiredPod:
    wired.append((path(pod_ns), ifname, cid, node))
    return wiring.wire_pod(path(pod_ns), ifname, cid, ip, GW, mtu, node_netns=node)


# -- the datapath ---------------------------------------------------------------------------------


def test_two_pods_on_one_node(node: str, netns_factory: Callable[..., str], run_in: RunIn,
                              ping: Callable[..., bool], wired: list,
                              root_netns_snapshot: Callable[[], dict[str, str]],
                              record_property: Callable[[str, Any], None]) -> None:
    root_before = root_netns_snapshot()
    pod1, pod2 = netns_factory("pod1"), netns_factory("pod2")
    t0 = time.perf_counter()
    w1 = wire(wired, pod1, "c1", "10.244.1.2", node)
    t1 = time.perf_counter()
    w2 = wire(wired, pod2, "c2", "10.244.1.3", node)
    t2 = time.perf_counter()
    record_property("wire_pod_ms", [round((t1 - t0) * 1000, 1), round((t2 - t1) * 1000, 1)])

    # Deterministic names, MACs and MTU as reported, on both ends.
    assert w1.host_ifname == host_veth_name("c1", "eth0") and w2.host_ifname == host_veth_name("c2", "eth0")
    node_links = links(run_in, node)
    for w, pod in ((w1, pod1), (w2, pod2)):
        host, eth0 = node_links[w.host_ifname], links(run_in, pod)["eth0"]
        assert host["linkinfo"]["info_kind"] == "veth" and eth0["linkinfo"]["info_kind"] == "veth"
        assert host["mtu"] == eth0["mtu"] == MTU == w.mtu
        assert host["address"] == w.host_mac and eth0["address"] == w.pod_mac
        assert host["operstate"] == eth0["operstate"] == "UP"
        # node side: gw/32 noprefixroute, forwarding on, proxy_arp off
        (a,) = addrs(run_in, node, w.host_ifname)
        assert (a["local"], a["prefixlen"], a.get("noprefixroute")) == (GW, 32, True)
        assert sysctl(run_in, node, f"net.ipv4.conf.{w.host_ifname}.forwarding") == "1"
        assert sysctl(run_in, node, f"net.ipv4.conf.{w.host_ifname}.proxy_arp") == "0"
        # pod side: lo up, podIP/32, gw/32 scope link, default via gw
        assert "UP" in links(run_in, pod)["lo"]["flags"]
        pod_routes = {(r["dst"], r.get("gateway"), r["dev"], r.get("scope")) for r in routes(run_in, pod)}
        assert pod_routes == {(GW, None, "eth0", "link"), ("default", GW, "eth0", None)}
    assert [a["local"] for a in addrs(run_in, pod1, "eth0")] == ["10.244.1.2"]
    node_routes = {(r["dst"], r["dev"], r.get("scope"))  # `ip` omits the protocol it filtered on
                   for r in routes(run_in, node, "proto", str(RTPROT_NETPLANE))}
    assert node_routes == {("10.244.1.2", w1.host_ifname, "link"), ("10.244.1.3", w2.host_ifname, "link")}

    # Real packets: pods -> gateway, pod <-> pod through the node, node -> pods.
    assert ping(pod1, GW) and ping(pod2, GW)
    assert ping(pod1, "10.244.1.3") and ping(pod2, "10.244.1.2")
    assert ping(node, "10.244.1.2") and ping(node, "10.244.1.3")
    # Full-MTU packets with DF across the node (1450 - 28 bytes of IP+ICMP headers).
    if shutil.which("ping"):
        run_in(pod1, "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", str(MTU - 28), "10.244.1.3")

    assert wiring.list_wired(node_netns=node) == {w1.host_ifname: "10.244.1.2", w2.host_ifname: "10.244.1.3"}
    wiring.check_pod(path(pod1), "eth0", "c1", "10.244.1.2", GW, node_netns=node, mtu=MTU)
    wiring.check_pod(path(pod2), "eth0", "c2", "10.244.1.3", GW, node_netns=node)
    assert root_netns_snapshot() == root_before, "the root network namespace changed"


def test_agent_mode_runs_in_the_node_namespace(node: str, netns_factory: Callable[..., str],
                                               run_in: RunIn, ping: Callable[..., bool]) -> None:
    """node_netns=None (the agent's way): the process itself sits in the node namespace."""
    pod = netns_factory("pod")
    script = (
        "import json, sys\n"
        "from netplane.cni import wiring\n"
        f"w = wiring.wire_pod({path(pod)!r}, 'eth0', 'agent-c', '10.244.1.9', {GW!r}, 1400)\n"
        f"wiring.check_pod({path(pod)!r}, 'eth0', 'agent-c', '10.244.1.9', {GW!r}, mtu=1400)\n"
        "print(json.dumps({'host': w.host_ifname, 'wired': wiring.list_wired()}))\n"
    )
    out = json.loads(run_in(node, sys.executable, "-c", script, timeout=30).stdout)
    host = host_veth_name("agent-c", "eth0")
    assert out == {"host": host, "wired": {host: "10.244.1.9"}}
    assert sysctl(run_in, node, f"net.ipv4.conf.{host}.forwarding") == "1"
    assert ping(pod, GW) and ping(node, "10.244.1.9")
    run_in(node, sys.executable, "-c",
           "from netplane.cni import wiring; wiring.unwire_pod(None, 'eth0', 'agent-c')")
    assert_node_clean(run_in, node)
    assert "eth0" not in links(run_in, pod)


# -- failures leave nothing behind -------------------------------------------------------------


def test_existing_ifname_fails_and_leaves_it_alone(node: str, netns_factory: Callable[..., str],
                                                    run_in: RunIn) -> None:
    pod = netns_factory("pod")
    run_in(pod, "ip", "link", "add", "eth0", "type", "bridge")  # (no dummy module on every kernel)
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    assert exc.value.code == codes.WIRING_FAILURE
    assert "eth0 already exists" in exc.value.msg
    assert_node_clean(run_in, node)
    assert links(run_in, pod)["eth0"]["linkinfo"]["info_kind"] == "bridge"


def test_missing_pod_netns(node: str, run_in: RunIn) -> None:
    missing = f"/run/netns/{node}-no-such-pod"
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(missing, "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    assert exc.value.code == codes.INVALID_NETNS and missing in exc.value.msg
    assert not os.path.exists(missing), "a namespace was created by accident"
    assert_node_clean(run_in, node)


def test_refuses_the_node_namespace_as_pod(node: str, run_in: RunIn) -> None:
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(path(node), "eth9", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    assert exc.value.code == codes.INVALID_NETNS and "node's own" in exc.value.msg
    assert_node_clean(run_in, node)


def test_missing_node_netns_is_an_error_not_a_new_namespace(netns_factory: Callable[..., str]) -> None:
    pod = netns_factory("pod")
    missing = f"{pod}-no-such-node"
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=missing)
    assert exc.value.code == codes.WIRING_FAILURE and missing in exc.value.msg
    assert not os.path.exists(path(missing))


def test_invalid_gateway_creates_nothing(node: str, netns_factory: Callable[..., str], run_in: RunIn) -> None:
    pod = netns_factory("pod")
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", "10.244.1.300", MTU, node_netns=node)
    assert exc.value.code == codes.WIRING_FAILURE and "gateway '10.244.1.300'" in exc.value.msg
    assert_node_clean(run_in, node)
    assert "eth0" not in links(run_in, pod)


@pytest.mark.parametrize("step", ["_write_sysctls", "_oper_up", "_resolve_gateway"])
def test_injected_failure_rolls_back(step: str, node: str, netns_factory: Callable[..., str],
                                     run_in: RunIn, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = netns_factory("pod")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(f"injected failure in {step}")

    monkeypatch.setattr(wiring, step, boom)
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    assert exc.value.code == codes.WIRING_FAILURE and f"injected failure in {step}" in exc.value.msg
    assert_node_clean(run_in, node)
    assert "eth0" not in links(run_in, pod)


def test_kernel_failure_half_way_rolls_back(node: str, netns_factory: Callable[..., str],
                                            run_in: RunIn) -> None:
    """The pod already has a default route: the veth and addresses exist when the kernel refuses."""
    pod = netns_factory("pod")
    run_in(pod, "ip", "link", "add", "other0", "type", "bridge")
    run_in(pod, "ip", "link", "set", "other0", "up")
    run_in(pod, "ip", "route", "add", "default", "dev", "other0")
    with pytest.raises(CniError) as exc:
        wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    assert exc.value.code == codes.WIRING_FAILURE
    assert "default via 10.244.1.1 dev eth0" in exc.value.msg and "File exists" in exc.value.msg
    assert_node_clean(run_in, node)
    assert "eth0" not in links(run_in, pod)
    assert [r["dev"] for r in routes(run_in, pod)] == ["other0"]


# -- unwire ---------------------------------------------------------------------------------------


def test_unwire_twice_and_never_wired(node: str, netns_factory: Callable[..., str], run_in: RunIn) -> None:
    pod = netns_factory("pod")
    wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    wiring.unwire_pod(path(pod), "eth0", "c1", node_netns=node)
    assert_node_clean(run_in, node)
    assert "eth0" not in links(run_in, pod)
    wiring.unwire_pod(path(pod), "eth0", "c1", node_netns=node)
    wiring.unwire_pod(None, "eth0", "never-added", node_netns=node)
    wiring.unwire_pod("", "eth0", "never-added", node_netns=node)
    # wiring again after an unwire works (a runtime retrying ADD after DEL)
    wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    wiring.unwire_pod(path(pod), "eth0", "c1", node_netns=node)
    assert_node_clean(run_in, node)


def test_unwire_after_the_pod_netns_is_gone(node: str, netns_factory: Callable[..., str],
                                            run_in: RunIn) -> None:
    pod = netns_factory("pod")
    w = wiring.wire_pod(path(pod), "eth0", "c1", "10.244.1.2", GW, MTU, node_netns=node)
    subprocess.run(["ip", "netns", "delete", pod], check=True, timeout=10)
    # The kernel destroys the pair when the namespace dies (asynchronously, in cleanup_net).
    deadline = time.monotonic() + 10
    while w.host_ifname in links(run_in, node) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.host_ifname not in links(run_in, node), "host veth outlived its pod namespace"
    wiring.unwire_pod(path(pod), "eth0", "c1", node_netns=node)
    assert_node_clean(run_in, node)
    assert not os.path.exists(path(pod))


# -- check ------------------------------------------------------------------------------------------


def test_check_pod_names_what_is_wrong(node: str, netns_factory: Callable[..., str], run_in: RunIn,
                                       wired: list) -> None:
    pod = netns_factory("pod")
    w = wire(wired, pod, "c1", "10.244.1.2", node)
    args = (path(pod), "eth0", "c1", "10.244.1.2", GW)
    wiring.check_pod(*args, node_netns=node, mtu=MTU)

    with pytest.raises(CniError) as exc:
        wiring.check_pod(*args, node_netns=node, mtu=1500)
    assert exc.value.code == codes.CHECK_FAILURE and "MTU is 1450, expected 1500" in exc.value.msg

    run_in(pod, "ip", "route", "del", "default")
    with pytest.raises(CniError) as exc:
        wiring.check_pod(*args, node_netns=node)
    assert exc.value.code == codes.CHECK_FAILURE
    assert "pod default route via 10.244.1.1 dev eth0 is missing" in exc.value.msg

    run_in(node, "ip", "route", "del", "10.244.1.2/32")
    with pytest.raises(CniError) as exc:
        wiring.check_pod(*args, node_netns=node)
    assert f"node route 10.244.1.2/32 dev {w.host_ifname} is missing" in exc.value.msg
    assert "default route" in exc.value.msg  # every problem is listed, not just the first

    with pytest.raises(CniError) as exc:
        wiring.check_pod(path(pod), "eth0", "other", "10.244.1.2", GW, node_netns=node)
    assert f"host veth {host_veth_name('other', 'eth0')} is missing" in exc.value.msg

    with pytest.raises(CniError) as exc:
        wiring.check_pod(f"/run/netns/{pod}-gone", "eth0", "c1", "10.244.1.2", GW, node_netns=node)
    assert exc.value.code == codes.CHECK_FAILURE and "does not exist" in exc.value.msg


def test_list_wired_only_lists_netplane_veths(node: str, netns_factory: Callable[..., str],
                                              run_in: RunIn, wired: list) -> None:
    pod = netns_factory("pod")
    w = wire(wired, pod, "c1", "10.244.1.2", node)
    run_in(node, "ip", "link", "add", "np.vx1", "type", "vxlan", "id", "1", "dstport", "8472")  # overlay
    run_in(node, "ip", "link", "add", "np0123456789a", "type", "bridge")  # right name, wrong kind
    run_in(node, "ip", "link", "add", "npother", "type", "veth", "peer", "name", "npother-p")
    assert wiring.list_wired(node_netns=node) == {w.host_ifname: "10.244.1.2"}
    run_in(node, "ip", "route", "del", "10.244.1.2/32")
    assert wiring.list_wired(node_netns=node) == {w.host_ifname: None}


# -- chaining -------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.access(TUNING, os.X_OK), reason=f"Debian's reference plugin {TUNING} missing")
def test_chained_tuning_plugin(node: str, netns_factory: Callable[..., str], run_in: RunIn,
                               wired: list, tmp_path: Any) -> None:
    """A prevResult shaped like netplane's ADD result is enough for the reference tuning plugin."""
    pod = netns_factory("pod")
    w = wire(wired, pod, "c-tuning", "10.244.1.2", node)
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": w.host_ifname, "mac": w.host_mac, "mtu": MTU},
                       {"name": "eth0", "mac": w.pod_mac, "mtu": MTU, "sandbox": path(pod)}],
        "ips": [{"address": "10.244.1.2/24", "gateway": GW, "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": GW}],
        "dns": {},
    }
    new_mac = "0a:58:0a:f4:01:02"
    conf = {"cniVersion": "1.0.0", "name": "netplane", "type": "tuning",
            "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}, "mac": new_mac,
            "dataDir": str(tmp_path / "tuning"), "prevResult": prev}
    env = {"CNI_CONTAINERID": "c-tuning", "CNI_NETNS": path(pod), "CNI_IFNAME": "eth0",
           "CNI_PATH": os.path.dirname(TUNING), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def tuning(command: str, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        # Plugins run in the "host" namespace, which for a pod on this node is the node namespace.
        proc = subprocess.run(["ip", "netns", "exec", node, "env", "-i",
                               *(f"{k}={v}" for k, v in {**env, "CNI_COMMAND": command}.items()), TUNING],
                              input=json.dumps(config), capture_output=True, text=True, timeout=20)
        assert proc.returncode == 0, f"tuning {command}: {proc.stdout} {proc.stderr}"
        return proc

    result = json.loads(tuning("ADD", conf).stdout)
    assert sysctl(run_in, pod, "net.ipv4.conf.eth0.arp_notify") == "1"
    assert links(run_in, pod)["eth0"]["address"] == new_mac
    # tuning found eth0 in the result by name (and sandbox) and updated its MAC; the host veth untouched
    assert [(i["name"], i["mac"]) for i in result["interfaces"]] == [(w.host_ifname, w.host_mac),
                                                                     ("eth0", new_mac)]
    assert result["interfaces"][1]["sandbox"] == path(pod)
    tuning("CHECK", {**conf, "prevResult": result})
    # our own CHECK tolerates the chained plugin's changes
    wiring.check_pod(path(pod), "eth0", "c-tuning", "10.244.1.2", GW, node_netns=node, mtu=MTU)
    tuning("DEL", {**conf, "prevResult": result})
    assert links(run_in, pod)["eth0"]["address"] == w.pod_mac  # tuning restored it on DEL


# -- namespaces stay where they are ----------------------------------------------------------------


def _thread_netns() -> dict[str, str]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[tid] = os.readlink(f"/proc/self/task/{tid}/ns/net")
        except OSError:
            pass  # a thread that just ended
    return out


def test_wiring_never_moves_a_thread_of_this_process(node: str, netns_factory: Callable[..., str],
                                                     run_in: RunIn, wired: list) -> None:
    """Pod and node sockets come from short-lived threads that enter the namespace and end;
    every thread that exists before and after stays in its namespace, and none is left over."""
    before = _thread_netns()
    pod = netns_factory("pod")
    wire(wired, pod, "c-threads", "10.244.1.2", node)
    wiring.unwire_pod(path(pod), "eth0", "c-threads", node_netns=node)
    wired.clear()
    deadline = time.monotonic() + 2
    while _thread_netns().keys() - before.keys() and time.monotonic() < deadline:
        time.sleep(0.01)  # a finished helper thread may need a moment to be reaped
    assert _thread_netns() == before
    assert_node_clean(run_in, node)
