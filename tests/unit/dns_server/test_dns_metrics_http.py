"""netplane.dns.metrics (coredns_* names, folding, cross-worker sums) and netplane.dns.http."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from netplane.dns.http import HttpEndpoints, parse_http_addr
from netplane.dns.metrics import DnsMetrics
from netplane.errors import ConfigError


def sample(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix + " ") or (line.startswith(prefix) and line[len(prefix)] == " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {prefix} in\n{text}")


def account(m: DnsMetrics, n: int = 1, rcode: str = "NOERROR") -> None:
    m.request(zone=".", proto="udp", family="1", qtype="A", request_size=45, rcode=rcode, plugin="kubernetes",
              response_size=90, seconds=0.0003, count=n)


def test_request_updates_every_server_series():
    m = DnsMetrics(server="dns://:53")
    account(m, 3)
    text = m.render().decode()
    base = 'server="dns://:53",zone=".",view=""'
    assert sample(text, f'coredns_dns_requests_total{{{base},proto="udp",family="1",type="A"}}') == 3
    assert sample(text, f'coredns_dns_responses_total{{{base},rcode="NOERROR",plugin="kubernetes"}}') == 3
    assert sample(text, f'coredns_dns_request_duration_seconds_bucket{{{base},type="A",le="0.00025"}}') == 0
    assert sample(text, f'coredns_dns_request_duration_seconds_bucket{{{base},type="A",le="0.0005"}}') == 3
    assert sample(text, f'coredns_dns_request_duration_seconds_sum{{{base},type="A"}}') == pytest.approx(0.0009)
    assert sample(text, f'coredns_dns_request_size_bytes_bucket{{{base},proto="udp",le="100"}}') == 3
    assert sample(text, f'coredns_dns_response_size_bytes_bucket{{{base},proto="udp",le="0"}}') == 0
    assert 'coredns_build_info{version="' in text
    assert "# TYPE coredns_panics_total counter" in text


def test_cache_and_forward_helpers():
    m = DnsMetrics(server="dns://:53")
    m.set_cache_zones(["."])
    m.cache_hit("success")
    m.cache_miss()
    m.set_cache_entries_source(lambda: {"success": 4, "denial": 1})
    m.forward_request("10.0.0.2:53")
    m.forward_response("10.0.0.2:53", "NOERROR", 0.01)
    m.forward_healthcheck_failure("10.0.0.2:53")
    m.forward_max_concurrent_reject()
    text = m.render().decode()
    assert sample(text, 'coredns_cache_hits_total{server="dns://:53",type="success",zones=".",view=""}') == 1
    assert sample(text, 'coredns_cache_misses_total{server="dns://:53",zones=".",view=""}') == 1
    assert sample(text, 'coredns_cache_entries{server="dns://:53",type="success",zones=".",view=""}') == 4
    assert sample(text, 'coredns_forward_requests_total{to="10.0.0.2:53"}') == 1
    assert sample(text, 'coredns_forward_responses_total{to="10.0.0.2:53",rcode="NOERROR"}') == 1
    assert sample(text, 'coredns_forward_request_duration_seconds_count{to="10.0.0.2:53",rcode="NOERROR"}') == 1
    assert sample(text, 'coredns_forward_healthcheck_failures_total{to="10.0.0.2:53"}') == 1
    assert sample(text, "coredns_forward_max_concurrent_rejects_total") == 1


def test_fold_hooks_run_before_every_render():
    m = DnsMetrics()
    pending = [2]

    def hook():
        account(m, pending[0])
        pending[0] = 0

    m.add_fold_hook(hook)
    assert 'type="A"} 2' in m.render().decode()
    assert 'type="A"} 2' in m.render().decode()


def test_render_sums_other_workers_snapshots():
    first, second, third = DnsMetrics(), DnsMetrics(), DnsMetrics()
    account(first, 2)
    account(second, 5)
    account(third, 1, rcode="NXDOMAIN")
    second.forward_response("10.0.0.2:53", "NOERROR", 0.01)
    text = first.render(extra=[second.snapshot(), third.snapshot()]).decode()
    assert sample(text, 'coredns_dns_responses_total{server="dns://:53",zone=".",view="",rcode="NOERROR",plugin="kubernetes"}') == 7
    assert sample(text, 'coredns_dns_responses_total{server="dns://:53",zone=".",view="",rcode="NXDOMAIN",plugin="kubernetes"}') == 1
    assert sample(text, 'coredns_dns_request_duration_seconds_count{server="dns://:53",zone=".",view="",type="A"}') == 8
    assert sample(text, 'coredns_forward_request_duration_seconds_count{to="10.0.0.2:53",rcode="NOERROR"}') == 1
    build_info = [line for line in text.splitlines() if line.startswith("coredns_build_info{")]
    assert len(build_info) == 1 and build_info[0].endswith(" 1")  # the same in every worker: not summed


@pytest.mark.parametrize("text,expected", [(":8080", ("0.0.0.0", 8080)), ("127.0.0.1:0", ("127.0.0.1", 0)),
                                           ("[::1]:9153", ("::1", 9153))])
def test_parse_http_addr(text, expected):
    assert parse_http_addr(text) == expected


@pytest.mark.parametrize("bad", ["8080", "host:port", "1.2.3.4:70000"])
def test_parse_http_addr_rejects(bad):
    with pytest.raises(ConfigError):
        parse_http_addr(bad)


def get(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_endpoints_health_ready_metrics_lameduck():
    missing = ["kubernetes"]
    http = HttpEndpoints(health_addr="127.0.0.1:0", ready_addr="127.0.0.1:0", metrics_addr="127.0.0.1:0",
                         not_ready=lambda: list(missing), render_metrics=lambda: b"coredns_x 1\n")
    http.start()
    try:
        health, ready, metrics = http.bound["/health"], http.bound["/ready"], http.bound["/metrics"]
        assert len({health, ready, metrics}) == 3
        assert get(health, "/health") == (200, b"OK")
        assert get(ready, "/ready") == (503, b"kubernetes\n")
        assert get(ready, "/health")[0] == 404  # each path only on its own address
        missing.clear()
        assert get(ready, "/ready") == (200, b"OK")
        assert get(metrics, "/metrics") == (200, b"coredns_x 1\n")
        http.lameduck.set()
        assert get(ready, "/ready") == (503, b"lameduck\n")
        assert get(health, "/health") == (200, b"OK")  # liveness holds while draining
    finally:
        http.stop()


def test_http_endpoints_share_one_address():
    http = HttpEndpoints(health_addr="127.0.0.1:0", ready_addr="", metrics_addr="",
                         not_ready=lambda: [], render_metrics=lambda: b"")
    http.start()
    try:
        assert set(http.bound) == {"/health"}
    finally:
        http.stop()
