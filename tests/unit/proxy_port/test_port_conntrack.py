"""Stale UDP conntrack selection (cleanup.go semantics), conntrack -L parsing, and the cleaner
with an injected runner."""

from __future__ import annotations

import subprocess
from typing import Any

from netplane.proxy.conntrack import (
    ConntrackCleaner,
    Flow,
    StaleFlowSelector,
    flows_to_delete,
    parse_flows,
    stale_udp_entries,
)
from netplane.proxy.model import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName

DNS = ServicePortName("kube-system", "dns", "dns", "UDP")
WEB = ServicePortName("default", "web", "http", "TCP")


def svc(name: ServicePortName, ip: str = "10.96.0.10", port: int = 53, **kw: Any) -> ServicePortInfo:
    return ServicePortInfo(name, ip, port, name.protocol, port, **kw)


def ep(ip: str, *, serving: bool = True, ready: bool = True) -> EndpointInfo:
    return EndpointInfo(ip, 53, ready=ready, serving=serving, terminating=not ready)


def state(services, endpoints, changed=None) -> ProxyState:
    services = {s.name: s for s in services}
    return ProxyState(services, endpoints,
                      frozenset(services) | frozenset(endpoints) if changed is None else frozenset(changed))


def test_first_sync_covers_every_udp_service_ip_and_nodeport() -> None:
    dns = svc(DNS, external_ips=("192.0.2.7",), load_balancer_ips=("192.0.2.8",), node_port=30053)
    cur = state([dns, svc(WEB, "10.96.0.1", 80)], {DNS: (ep("10.244.1.5"),)})
    sel = stale_udp_entries(None, cur)
    serving = frozenset({"10.244.1.5"})
    assert sorted(sel) == sorted([
        StaleFlowSelector(53, "10.96.0.10", serving, str(DNS)),
        StaleFlowSelector(53, "192.0.2.7", serving, str(DNS)),
        StaleFlowSelector(53, "192.0.2.8", serving, str(DNS)),
        StaleFlowSelector(30053, None, serving, str(DNS))])


def test_endpoint_removed_or_not_serving_any_more_is_a_cleanup() -> None:
    dns = svc(DNS)
    before = state([dns], {DNS: (ep("10.244.1.5"), ep("10.244.2.5"))})
    after = state([dns], {DNS: (ep("10.244.1.5"),)}, [DNS])
    assert stale_udp_entries(before, after) == [
        StaleFlowSelector(53, "10.96.0.10", frozenset({"10.244.1.5"}), str(DNS))]
    terminating = state([dns], {DNS: (ep("10.244.1.5"), ep("10.244.2.5", serving=False, ready=False))},
                        [DNS])
    assert len(stale_udp_entries(before, terminating)) == 1
    # Serving-but-terminating endpoints still count as serving (IsServing).
    draining = state([dns], {DNS: (ep("10.244.1.5"), ep("10.244.2.5", ready=False))}, [DNS])
    assert stale_udp_entries(before, draining) == []


def test_empty_to_non_empty_is_a_cleanup_but_adding_more_is_not() -> None:
    dns = svc(DNS)
    empty = state([dns], {})
    one = state([dns], {DNS: (ep("10.244.1.5"),)}, [DNS])
    two = state([dns], {DNS: (ep("10.244.1.5"), ep("10.244.2.5"))}, [DNS])
    assert [s.serving for s in stale_udp_entries(empty, one)] == [frozenset({"10.244.1.5"})]
    assert stale_udp_entries(one, two) == []


def test_unchanged_tcp_and_deleted_services_are_left_alone() -> None:
    dns, web = svc(DNS), svc(WEB, "10.96.0.1", 80)
    before = state([dns, web], {DNS: (ep("10.244.1.5"),), WEB: (ep("10.244.1.6"),)})
    assert stale_udp_entries(before, state([dns, web], dict(before.endpoints), [])) == []
    assert stale_udp_entries(before, state([dns, web], {DNS: (ep("10.244.1.5"),)}, [WEB])) == []
    assert stale_udp_entries(before, state([web], dict(before.endpoints), [DNS])) == []


def test_moved_frontend_is_a_cleanup_even_with_the_same_endpoints() -> None:
    before = state([svc(DNS)], {DNS: (ep("10.244.1.5"),)})
    after = state([svc(DNS, node_port=30053)], {DNS: (ep("10.244.1.5"),)}, [DNS])
    assert [s.orig_port_dst for s in stale_udp_entries(before, after)] == [53, 30053]


CONNTRACK_L = """\
udp      17 28 src=10.244.1.9 dst=10.96.0.10 sport=40000 dport=53 src=10.244.2.5 dst=10.244.1.9 sport=53 dport=40000 mark=0 use=1
udp      17 29 src=10.244.1.9 dst=10.96.0.10 sport=40001 dport=53 src=10.244.1.5 dst=10.244.1.9 sport=53 dport=40001 mark=0 use=1
udp      17 20 src=10.244.1.9 dst=10.96.0.10 sport=40002 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.1.9 sport=53 dport=40002 mark=0 use=1
udp      17 20 src=192.0.2.1 dst=172.18.0.2 sport=5000 dport=30053 src=10.244.2.5 dst=172.18.0.2 sport=53 dport=5000 mark=0 use=1
udp      17 20 src=192.0.2.1 dst=172.18.0.2 sport=5001 dport=30053 src=10.244.1.5 dst=172.18.0.2 sport=53 dport=5001 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.1.9 dst=10.96.0.10 sport=40003 dport=53 src=10.244.2.5 dst=10.244.1.9 sport=53 dport=40003 [ASSURED] mark=0 use=1
garbage line
"""


def test_parse_flows_reads_both_tuples() -> None:
    flows = parse_flows(CONNTRACK_L)
    assert len(flows) == 6
    assert flows[2] == Flow("udp", "10.244.1.9", "10.96.0.10", 40002, 53, "10.96.0.10")
    assert flows[5].protocol == "tcp"


def test_flows_to_delete_keeps_serving_reply_sources() -> None:
    serving = frozenset({"10.244.1.5"})
    selectors = [StaleFlowSelector(53, "10.96.0.10", serving), StaleFlowSelector(30053, None, serving)]
    assert flows_to_delete(parse_flows(CONNTRACK_L), selectors) == [
        ("10.96.0.10", 53, "10.244.2.5"),  # endpoint gone
        ("10.96.0.10", 53, "10.96.0.10"),  # never NATed (no endpoints back then)
        (None, 30053, "10.244.2.5")]  # NodePort, any destination


def test_cleaner_lists_once_deletes_per_group_and_tolerates_zero_deleted() -> None:
    calls: list[list[str]] = []

    def run(argv, **_):
        calls.append(argv)
        if "-L" in argv:
            return subprocess.CompletedProcess(argv, 0, CONNTRACK_L, "")
        return subprocess.CompletedProcess(
            argv, 1, "", "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n")

    cleaner = ConntrackCleaner(run=run)
    assert cleaner.clean([]) == 0 and calls == []  # no selector: no process at all
    n = cleaner.clean([StaleFlowSelector(53, "10.96.0.10", frozenset({"10.244.1.5"}))])
    assert n == 2
    assert calls[0] == ["conntrack", "-L", "-p", "udp"]
    assert calls[1] == ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.10",
                        "--orig-port-dst", "53", "--reply-src", "10.244.2.5"]
