"""netplane.dns.main.DnsWorker with an in-memory apiserver: informers → zone → chain → sockets,
readiness, startup without an apiserver, and configuration reload."""

from __future__ import annotations

import queue
import socket
import time
from typing import Any

import dnslib
import pytest

from netplane.dns.config import parse_config
from netplane.dns.main import ENDPOINT_SLICES, NAMESPACES, SERVICES, DnsWorker
from netplane.dns.server import ServerOptions, bind_sockets
from netplane.errors import ApiError, ConfigError
from netplane.k8s.client import WatchEvent


class FakeWatch:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def __iter__(self):
        while True:
            event = self.events.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self.events.put(None)


class FakeApi:
    """Lists fixed items per collection; watches deliver what `push` sends."""

    def __init__(self, items: dict[str, list[dict]], *, broken: bool = False) -> None:
        self.items, self.broken = items, broken
        self.watches: dict[str, FakeWatch] = {}
        self.rv = 10

    def list(self, path: str, **_kw: Any) -> dict:
        if self.broken:
            raise ApiError("apiserver unreachable")
        return {"metadata": {"resourceVersion": str(self.rv)}, "items": self.items.get(path, [])}

    def watch(self, path: str, **_kw: Any) -> FakeWatch:
        watch = self.watches[path] = FakeWatch()
        return watch

    def push(self, path: str, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.watches[path].events.put(WatchEvent(kind, obj))


def service(name: str, ip: str, ns: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]}}


COREFILE = """\
.:53 {
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        ttl %d
    }
}
"""


def ask(port: int, name: str) -> dnslib.DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(dnslib.DNSRecord.question(name).pack(), ("127.0.0.1", port))
        return dnslib.DNSRecord.parse(s.recv(4096))


@pytest.fixture
def make_worker():
    workers: list[DnsWorker] = []

    def make(api: FakeApi, ttl: int = 5) -> DnsWorker:
        worker = DnsWorker(parse_config(COREFILE % ttl), bind_sockets("127.0.0.1", 0), lambda: api,
                           server_options=ServerOptions(host="127.0.0.1", port=0, pool_threads=2))
        workers.append(worker)
        return worker

    yield make
    for w in workers:
        w.stopping.set()
        w.stop()


def test_worker_serves_the_cluster_and_follows_watch_events(make_worker):
    api = FakeApi({SERVICES: [service("web", "10.96.0.10")], NAMESPACES: [{"metadata": {"name": "default"}}]})
    worker = make_worker(api)
    worker.start()
    assert worker.not_ready() == []
    port = worker.server.address[1]
    assert [str(rr.rdata) for rr in ask(port, "web.default.svc.cluster.local").rr] == ["10.96.0.10"]
    assert ask(port, "api.default.svc.cluster.local").header.rcode == dnslib.RCODE.NXDOMAIN
    api.push(SERVICES, "ADDED", service("api", "10.96.0.11"))
    deadline = time.monotonic() + 3
    while ask(port, "api.default.svc.cluster.local").header.rcode != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [str(rr.rdata) for rr in ask(port, "api.default.svc.cluster.local").rr] == ["10.96.0.11"]
    assert ENDPOINT_SLICES in api.watches


def test_worker_serves_after_the_startup_timeout_without_an_apiserver(make_worker, monkeypatch):
    monkeypatch.setattr("netplane.dns.main.STARTUP_TIMEOUT", 0.3)
    worker = make_worker(FakeApi({}, broken=True))
    t0 = time.monotonic()
    worker.start()
    assert 0.3 <= time.monotonic() - t0 < 3
    assert worker.not_ready() == ["kubernetes"]
    # Not synced: an unknown cluster name is SERVFAIL, not a lie (NXDOMAIN).
    assert ask(worker.server.address[1], "web.default.svc.cluster.local").header.rcode == dnslib.RCODE.SERVFAIL


def test_reload_swaps_the_chain_and_refuses_a_new_zone(make_worker):
    api = FakeApi({SERVICES: [service("web", "10.96.0.10")], NAMESPACES: [{"metadata": {"name": "default"}}]})
    worker = make_worker(api, ttl=5)
    worker.start()
    port = worker.server.address[1]
    assert ask(port, "web.default.svc.cluster.local").rr[0].ttl == 5
    assert ask(port, "web.default.svc.cluster.local").rr[0].ttl == 5  # now from the wire cache
    worker._apply_config(parse_config(COREFILE % 30))
    assert ask(port, "web.default.svc.cluster.local").rr[0].ttl == 30
    with pytest.raises(ConfigError, match="restart"):
        worker._apply_config(parse_config(COREFILE.replace("cluster.local", "example.internal") % 5))
    assert ask(port, "web.default.svc.cluster.local").rr[0].ttl == 30
