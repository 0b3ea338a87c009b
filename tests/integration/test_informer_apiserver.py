"""The client and informer against a real `netplane apiserver` subprocess on 127.0.0.1.

Each test starts its own server (killed by PID afterwards, always) and checks that an informer's
cache converges on the server's state through ordinary events, a killed watch connection, a
server restart with --data-dir, and a 410 Gone re-list after missing more changes than the
server's --history keeps.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netplane.errors import NotFoundError
from netplane.k8s import Client, Informer, Service, load_kubeconfig, resource_path

SERVICES = resource_path("v1", "services")
DEFAULT_SERVICES = resource_path("v1", "services", "default")

# The `start_apiserver` (skips when no `netplane` executable) and `free_port` fixtures come from
# conftest.py; a server is `Any` here.
StartApiserver = Callable[..., Any]


@pytest.fixture
def informers() -> Iterator[list[Informer[Any]]]:
    running: list[Informer[Any]] = []
    try:
        yield running
    finally:
        for inf in running:
            inf.stop(timeout=5)


class CountingClient(Client):
    """A Client that counts list calls, to tell a re-list from a resumed watch."""

    lists = 0

    def list(self, path: str, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        self.lists += 1
        return super().list(path, **kwargs)


@dataclass
class Events:
    q: queue.Queue[tuple[str, str]] = field(default_factory=queue.Queue)

    def attach(self, inf: Informer[Service]) -> None:
        inf.add_handler(lambda s: self.q.put(("add", s.name)),
                        lambda old, new: self.q.put(("update", new.name)),
                        lambda s: self.q.put(("delete", s.name)))

    def next(self, timeout: float = 10.0) -> tuple[str, str]:
        return self.q.get(timeout=timeout)

    def drain(self, quiet: float = 0.5) -> list[tuple[str, str]]:
        out = []
        while True:
            try:
                out.append(self.q.get(timeout=quiet))
            except queue.Empty:
                return out


def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def service(name: str, port: int = 80, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", **meta},
            "spec": {"ports": [{"port": port, "protocol": "TCP"}], "selector": {"app": name}}}


def converged(inf: Informer[Service], client: Client) -> bool:
    live = {f"default/{i['metadata']['name']}": Service.from_dict(i)
            for i in client.list_all(DEFAULT_SERVICES)["items"]}
    cached = {k: v for k, v in inf.snapshot().items() if k.startswith("default/")}
    return cached == live


def new_informer(client: Client, informers: list[Informer[Any]], **kwargs: Any
                 ) -> Informer[Service]:
    inf: Informer[Service] = Informer(client, SERVICES, Service.from_dict,
                                      backoff=(0.1, 1.0, 0.2), **kwargs)
    informers.append(inf)
    return inf


def test_create_update_delete_seen(start_apiserver: StartApiserver,
                                   informers: list[Informer[Any]]) -> None:
    server = start_apiserver()
    client = Client(load_kubeconfig(server.kubeconfig))
    inf = new_informer(client, informers, page_size=2)
    events = Events()
    events.attach(inf)
    client.create(DEFAULT_SERVICES, service("before"))
    inf.start()
    assert inf.wait_for_sync(10)
    initial = events.drain()
    assert ("add", "before") in initial and all(kind == "add" for kind, _ in initial)

    client.create(DEFAULT_SERVICES, service("web"))
    assert events.next() == ("add", "web")
    cluster_ip = inf.get("default/web").cluster_ips  # type: ignore[union-attr]
    assert cluster_ip and cluster_ip[0] != "None"  # allocated by the server

    client.patch(f"{DEFAULT_SERVICES}/web", {"spec": {"ports": [{"port": 8080,
                                                                 "protocol": "TCP"}]}})
    assert events.next() == ("update", "web")
    assert inf.get("default/web").ports[0].port == 8080  # type: ignore[union-attr]

    # A change netplane ignores (an annotation) is filtered out: no update event.
    client.patch(f"{DEFAULT_SERVICES}/web", {"metadata": {"annotations": {"a": "b"}}})
    client.delete(f"{DEFAULT_SERVICES}/web")
    assert events.next() == ("delete", "web")
    assert inf.get("default/web") is None
    with pytest.raises(NotFoundError):
        client.get(f"{DEFAULT_SERVICES}/web")
    assert converged(inf, client)
    assert events.drain() == []


def test_bookmarks_advance_resource_version(start_apiserver: StartApiserver,
                                            informers: list[Informer[Any]]) -> None:
    server = start_apiserver("--bookmark-interval", "0.2")
    client = Client(load_kubeconfig(server.kubeconfig))
    inf = new_informer(client, informers)
    inf.start()
    assert inf.wait_for_sync(10)
    # Changes to another resource move the server's resourceVersion; bookmarks on the services
    # watch carry it to the informer although no service changed.
    created = client.create(resource_path("v1", "configmaps", "default"),
                            {"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "cm"}, "data": {"k": "v"}})
    target = int(created["metadata"]["resourceVersion"])
    eventually(lambda: int(inf.resource_version or 0) >= target, what="a bookmark")


def _watch_socket(inf: Informer[Any]) -> socket.socket | None:
    watch = inf._watch  # the informer's open Watch; reaching in is the point of this test
    conn = getattr(watch, "_conn", None)
    return getattr(conn, "sock", None)


def test_killed_watch_connection_converges(start_apiserver: StartApiserver,
                                           informers: list[Informer[Any]]) -> None:
    server = start_apiserver()
    admin = Client(load_kubeconfig(server.kubeconfig))
    watcher = CountingClient(load_kubeconfig(server.kubeconfig))
    inf = new_informer(watcher, informers)
    inf.start()
    assert inf.wait_for_sync(10)
    for round_ in range(3):
        eventually(lambda: _watch_socket(inf) is not None, what="an open watch")
        sock = _watch_socket(inf)
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # as if the network dropped it
        for i in range(5):
            admin.create(DEFAULT_SERVICES, service(f"r{round_}-{i}"))
        admin.delete(f"{DEFAULT_SERVICES}/r{round_}-0")
        eventually(lambda: converged(inf, admin), what="convergence after a dropped watch")
    # Every drop was healed by resuming the watch from the last resourceVersion, not re-listing.
    assert watcher.lists == 1
    assert len([k for k in inf.keys() if k.startswith("default/r")]) == 12


def test_apiserver_restart_with_data_dir(start_apiserver: StartApiserver,
                                         informers: list[Informer[Any]],
                                         scratch_dir: Path,
                                         free_port: Callable[[], int]) -> None:
    data = scratch_dir / "data"
    data.mkdir()
    # A fixed port: the informer's client keeps the URL across the restart.
    server = start_apiserver("--data-dir", str(data), port=free_port())
    client = Client(load_kubeconfig(server.kubeconfig))
    for i in range(5):
        client.create(DEFAULT_SERVICES, service(f"keep-{i}"))
    inf = new_informer(client, informers)
    events = Events()
    events.attach(inf)
    inf.start()
    assert inf.wait_for_sync(10)
    events.drain(0.2)
    rv_before = int(inf.resource_version)

    server.stop()
    time.sleep(0.5)  # the informer sees the connection go and starts backing off
    server.start()
    client.delete(f"{DEFAULT_SERVICES}/keep-0")
    client.create(DEFAULT_SERVICES, service("after-restart"))
    eventually(lambda: converged(inf, client), what="convergence after a restart")
    assert int(inf.resource_version) > rv_before  # the store kept counting across the restart
    got = events.drain()
    assert ("delete", "keep-0") in got and ("add", "after-restart") in got
    assert not [e for e in got if e[1].startswith("keep-") and e != ("delete", "keep-0")]


def test_gone_relist_emits_exactly_what_changed(start_apiserver: StartApiserver,
                                               informers: list[Informer[Any]]) -> None:
    server = start_apiserver("--history", "20")
    client = Client(load_kubeconfig(server.kubeconfig))
    watcher = CountingClient(load_kubeconfig(server.kubeconfig))
    for i in range(10):
        client.create(DEFAULT_SERVICES, service(f"s{i}"))
    inf = new_informer(watcher, informers)
    events = Events()
    events.attach(inf)
    inf.start()
    assert inf.wait_for_sync(10)
    assert sorted(n for _, n in events.drain(0.2) if n.startswith("s")) == [
        f"s{i}" for i in range(10)]
    inf.stop()  # disconnect: the watch closes, cache and resourceVersion are kept
    assert watcher.lists == 1

    # 100 changes while away, far more than the server's 20 events of history.
    for i in range(3):
        client.delete(f"{DEFAULT_SERVICES}/s{i}")
    for i in range(3, 6):
        client.patch(f"{DEFAULT_SERVICES}/s{i}", {"spec": {"ports": [{"port": 9000 + i,
                                                                      "protocol": "TCP"}]}})
    client.patch(f"{DEFAULT_SERVICES}/s6", {"metadata": {"annotations": {"ignored": "yes"}}})
    for i in range(93):
        client.create(DEFAULT_SERVICES, service(f"n{i}"))

    inf.start()  # resume: the watch from the old resourceVersion gets 410, so it re-lists
    eventually(lambda: converged(inf, client), what="convergence after 410")
    assert watcher.lists == 2  # exactly one re-list
    got = events.drain()
    assert sorted(n for kind, n in got if kind == "delete") == ["s0", "s1", "s2"]
    assert sorted(n for kind, n in got if kind == "update") == ["s3", "s4", "s5"]
    assert sorted(n for kind, n in got if kind == "add") == sorted(f"n{i}" for i in range(93))
    assert len(got) == 99  # s6's annotation-only change and s7-s9 produce nothing
