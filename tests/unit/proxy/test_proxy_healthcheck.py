"""ProxyHealth logic on a fake clock, and the real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from netplane.proxy.healthcheck import ProxyHealth, ServiceHealthServer, serve_proxy_health
from netplane.proxy.metrics import ProxyMetrics
from netplane.proxy.model import ServicePortName
from netplane.proxy.runner import FakeClock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str = "/") -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        data = json.loads(body) if ctype == "application/json" else {"text": body.decode()}
        return resp.status, data, resp.headers
    finally:
        conn.close()


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ----------------------------------------------------------------------------------- ProxyHealth


def test_proxy_health_timeline() -> None:
    clock = FakeClock(start=0.0, wall=1_700_000_000.0)
    metrics = ProxyMetrics()
    h = ProxyHealth(60.0, clock=clock, metrics=metrics)
    assert h.answer(livez=False)[0] == 200  # starting up: healthy
    h.queued_update()
    clock.advance(59.0)
    assert h.is_healthy()
    h.queued_update()  # a later change does not reset the oldest one
    clock.advance(1.0)
    code, body = h.answer(livez=False)
    assert code == 503 and body["lastUpdated"] == "0001-01-01T00:00:00Z"
    assert body["currentTime"] == "2023-11-14T22:14:20Z" and body["nodeEligible"] is True
    h.updated()
    last = clock.time()
    code, body = h.answer(livez=False)
    assert code == 200
    clock.advance(1000.0)
    assert h.is_healthy()  # nothing queued: an idle proxy stays healthy
    h.queued_update()
    clock.advance(61.0)
    code, body = h.answer(livez=True)
    assert code == 503 and "nodeEligible" not in body
    assert last == 1_700_000_060.0
    assert body["lastUpdated"] == "2023-11-14T22:14:20Z"  # the last successful sync
    assert body["currentTime"] == "2023-11-14T22:32:01Z"
    assert metrics.healthz_total.value("200") == 2 and metrics.healthz_total.value("503") == 1
    assert metrics.livez_total.value("503") == 1


def test_node_ineligible_fails_healthz_but_not_livez() -> None:
    h = ProxyHealth(10.0, clock=FakeClock())
    h.set_node_eligible(False)
    assert h.answer(livez=False)[0] == 503
    assert h.answer(livez=True)[0] == 200
    assert h.answer(livez=False)[1]["nodeEligible"] is False


def test_proxy_health_http() -> None:
    clock = FakeClock(start=0.0)
    metrics = ProxyMetrics()
    h = ProxyHealth(5.0, clock=clock, metrics=metrics)
    server = serve_proxy_health(h, ("127.0.0.1", 0), metrics)
    try:
        code, body, headers = get(server.port, "/healthz")
        assert code == 200 and set(body) == {"lastUpdated", "currentTime", "nodeEligible"}
        assert headers["Content-Type"] == "application/json"
        h.queued_update()
        clock.advance(6.0)
        assert get(server.port, "/healthz")[0] == 503
        assert get(server.port, "/livez")[0] == 503
        assert get(server.port, "/nope")[0] == 404
        code, body, _ = get(server.port, "/metrics")
        assert code == 200
        assert 'kubeproxy_proxy_healthz_total{code="503"} 1' in body["text"]
        assert 'kubeproxy_proxy_livez_total{code="503"} 1' in body["text"]
    finally:
        server.close()
    assert refused(server.port)


# --------------------------------------------------------------------------- ServiceHealthServer


@pytest.fixture
def hc_server() -> Iterator[tuple[ServiceHealthServer, list[bool]]]:
    healthy = [True]
    server = ServiceHealthServer(bind_address="127.0.0.1", is_proxy_healthy=lambda: healthy[0])
    try:
        yield server, healthy
    finally:
        server.close()


def test_service_health_answers(hc_server) -> None:
    server, healthy = hc_server
    port = free_port()
    http_ = ServicePortName("ns", "web", "http", "TCP")
    https = ServicePortName("ns", "web", "https", "TCP")
    server.sync_services({http_: port, https: port})  # one listener per service
    assert server.ports() == {("ns", "web"): port}

    code, body, headers = get(port)
    assert code == 503 and body == {"service": {"namespace": "ns", "name": "web"},
                                    "localEndpoints": 0, "serviceProxyHealthy": True}
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "0"

    server.sync_endpoints({("ns", "web"): 2, ("ns", "other"): 1})
    code, body, headers = get(port, "/any/path")
    assert code == 200 and body["localEndpoints"] == 2
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"

    healthy[0] = False
    code, body, _ = get(port)
    assert code == 503 and body["serviceProxyHealthy"] is False and body["localEndpoints"] == 2

    healthy[0] = True
    server.sync_endpoints({})  # absent: back to zero
    assert get(port)[0] == 503


def test_service_health_ports_follow_the_services(hc_server) -> None:
    server, _ = hc_server
    a, b, moved = free_port(), free_port(), free_port()
    server.sync_services({("ns", "a"): a, ("ns", "b"): b})
    assert not refused(a) and not refused(b)
    server.sync_services({("ns", "a"): moved, ("ns", "b"): b})
    assert refused(a) and not refused(moved) and not refused(b)
    server.sync_endpoints({("ns", "a"): 1})
    assert get(moved)[0] == 200
    server.sync_services({("ns", "a"): moved, ("ns", "zero"): 0})
    assert refused(b) and server.ports() == {("ns", "a"): moved}


def test_busy_port_is_retried_at_the_next_sync(hc_server, caplog) -> None:
    server, _ = hc_server
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with caplog.at_level(logging.ERROR, logger="netplane.proxy.healthcheck"):
            server.sync_services({("ns", "web"): port})
        assert server.ports() == {}
        assert any("ns/web" in r.getMessage() for r in caplog.records)
    finally:
        blocker.close()
    server.sync_services({("ns", "web"): port})
    assert server.ports() == {("ns", "web"): port}
    assert get(port)[0] == 503


def test_change_queued_during_a_sync_stays_owed() -> None:
    clock = FakeClock(start=0.0)
    h = ProxyHealth(10.0, clock=clock)
    h.queued_update()
    h.sync_started()
    clock.advance(1.0)
    h.queued_update()  # may have missed the running sync's input
    h.updated()
    clock.advance(10.0)
    assert not h.is_healthy()
    h.sync_started()
    h.updated()
    assert h.is_healthy()
