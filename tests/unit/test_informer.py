"""Informer behaviour against an in-memory fake apiserver (no network, no threads unless noted).

The fake keeps objects, a resourceVersion counter and an event history like the real server:
lists are paginated with continue tokens, a watch replays history after its resourceVersion and
then ends the way the test scripted it (normally, with a bookmark, a dropped connection, an
ERROR 410...), and `compact()` forgets history so older resourceVersions get 410 Gone.
Tests drive the informer one step at a time with `run_once()`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from netplane.errors import ApiError, ApiUnavailableError, GoneError
from netplane.k8s.client import WatchEvent
from netplane.k8s.informer import Backoff, Informer
from netplane.k8s.objects import EndpointSlice, Service

PATH = "/api/v1/services"


def svc(name: str, port: int = 80, ns: str = "default", **extra_meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, **extra_meta},
            "spec": {"type": "ClusterIP", "ports": [{"port": port}]}}


@dataclass
class Ending:
    """How one scripted watch ends after replaying history."""

    kind: str = "end"  # end | drop | gone | error | bookmark | block
    after: int | None = None  # deliver only this many history events first
    bookmark_rv: str = ""
    duration: float = 60.0  # seconds the watch lasts on the fake clock (capped by its timeout)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeWatch:
    def __init__(self, events: list[WatchEvent], ending: Ending, gone_at_start: bool,
                 clock: FakeClock | None, timeout: int | None) -> None:
        self.events = events
        self.ending = ending
        self.gone_at_start = gone_at_start
        self.clock = clock
        self.duration = min(ending.duration, timeout or ending.duration)
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[WatchEvent]:
        if self.gone_at_start:
            raise GoneError(410, "Expired", "too old resource version")
        events = self.events if self.ending.after is None else self.events[: self.ending.after]
        for e in events:
            if self.closed.is_set():
                return
            yield e
        if self.clock is not None:
            self.clock.now += self.duration
        kind = self.ending.kind
        if kind == "drop":
            raise ApiUnavailableError("connection reset by peer")
        if kind == "gone":
            raise GoneError(410, "Expired", "too old resource version (in stream)")
        if kind == "error":
            raise ApiError(500, "InternalError", "etcd is sad")
        if kind == "bookmark":
            yield WatchEvent("BOOKMARK", {"kind": "Service",
                                          "metadata": {"resourceVersion": self.ending.bookmark_rv}})
        if kind == "block":
            self.closed.wait(30)

    def close(self) -> None:
        self.closed.set()


@dataclass
class FakeApi:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rv: int = 100
    history: list[tuple[int, WatchEvent]] = field(default_factory=list)
    oldest_resumable: int = 0  # watches from an older rv get 410
    list_calls: list[dict[str, Any]] = field(default_factory=list)
    watch_calls: list[dict[str, Any]] = field(default_factory=list)
    list_errors: list[BaseException] = field(default_factory=list)
    continue_expired: int = 0  # this many continue-page requests answer 410
    endings: list[Ending] = field(default_factory=list)
    watches: list[FakeWatch] = field(default_factory=list)
    clock: FakeClock | None = None

    # --- mutations, recorded like etcd would

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def put(self, doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        etype = "MODIFIED" if key in self.objects else "ADDED"
        stored = {**doc, "metadata": {**meta, "resourceVersion": self._bump()}}
        self.objects[key] = stored
        self.history.append((self.rv, WatchEvent(etype, stored)))

    def remove(self, name: str, ns: str = "default") -> None:
        doc = self.objects.pop(f"{ns}/{name}")
        final = {**doc, "metadata": {**doc["metadata"], "resourceVersion": self._bump()}}
        self.history.append((self.rv, WatchEvent("DELETED", final)))

    def compact(self) -> None:
        """Forget all history: every resourceVersion before now is gone."""
        self.history.clear()
        self.oldest_resumable = self.rv

    # --- the ListWatcher protocol

    def list(self, path: str, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None,
             continue_: str | None = None, resource_version: str | None = None
             ) -> dict[str, Any]:
        self.list_calls.append({"path": path, "limit": limit, "continue": continue_,
                                "label_selector": label_selector})
        if self.list_errors:
            raise self.list_errors.pop(0)
        if continue_ and self.continue_expired > 0:
            self.continue_expired -= 1
            raise GoneError(410, "Expired", "continue token expired")
        keys = sorted(self.objects)
        start = int(continue_.split(":")[1]) if continue_ else 0
        end = len(keys) if not limit else start + limit
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if end < len(keys):
            meta["continue"] = f"{self.rv}:{end}"
        return {"kind": "ServiceList", "metadata": meta,
                "items": [self.objects[k] for k in keys[start:end]]}

    def watch(self, path: str, *, resource_version: str, allow_bookmarks: bool = True,
              timeout_seconds: int | None = None, label_selector: str | None = None,
              field_selector: str | None = None) -> FakeWatch:
        self.watch_calls.append({"rv": resource_version, "bookmarks": allow_bookmarks,
                                 "timeout": timeout_seconds})
        since = int(resource_version or 0)
        ending = self.endings.pop(0) if self.endings else Ending()
        w = FakeWatch([e for rv, e in self.history if rv > since], ending,
                      gone_at_start=since < self.oldest_resumable, clock=self.clock,
                      timeout=timeout_seconds)
        self.watches.append(w)
        return w


@dataclass
class Recorder:
    events: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, obj: Any) -> None:
        self.events.append(("add", obj.name))

    def update(self, old: Any, new: Any) -> None:
        self.events.append(("update", old.name, new.name))

    def delete(self, obj: Any) -> None:
        self.events.append(("delete", obj.name))

    def take(self) -> list[tuple[str, ...]]:
        out, self.events = self.events, []
        return out


@dataclass
class Harness:
    api: FakeApi
    informer: Informer[Any]
    rec: Recorder
    sleeps: list[float]
    clock: FakeClock


def make(api: FakeApi | None = None, *, convert: Any = Service.from_dict,
         page_size: int = 500, **kwargs: Any) -> Harness:
    api = api or FakeApi()
    sleeps: list[float] = []
    clock = kwargs.pop("clock", None) or FakeClock()
    api.clock = clock

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    inf: Informer[Any] = Informer(api, PATH, convert, page_size=page_size, sleep=sleep,
                                  clock=clock, rng=random.Random(7), **kwargs)
    rec = Recorder()
    inf.add_handler(rec.add, rec.update, rec.delete)
    return Harness(api, inf, rec, sleeps, clock)


def test_initial_list_paginates_and_syncs() -> None:
    api = FakeApi()
    for n in "edcba":
        api.put(svc(n))
    h = make(api, page_size=2)
    assert not h.informer.has_synced() and not h.informer.wait_for_sync(0)
    assert h.informer.run_once() == "listed"
    assert h.informer.has_synced() and h.informer.wait_for_sync(0)
    assert [c["continue"] for c in api.list_calls] == [None, "105:2", "105:4"]
    assert all(c["limit"] == 2 for c in api.list_calls)
    assert h.rec.take() == [("add", n) for n in "abcde"]  # adds only, no updates/deletes
    assert h.informer.resource_version == "105"
    assert sorted(h.informer.keys()) == [f"default/{n}" for n in "abcde"]
    assert h.informer.get("default/c") == Service.from_dict(api.objects["default/c"])
    assert h.informer.get("default/zzz") is None
    assert len(h.informer) == 5 and len(h.informer.list()) == 5
    assert dict(h.informer.snapshot()).keys() == {f"default/{n}" for n in "abcde"}


def test_watch_events_applied() -> None:
    api = FakeApi()
    api.put(svc("a"))
    api.put(svc("b"))
    h = make(api)
    h.informer.run_once()
    h.rec.take()
    api.put(svc("c"))
    api.put(svc("a", port=81))
    api.remove("b")
    assert h.informer.run_once() == "watched"
    assert h.rec.take() == [("add", "c"), ("update", "a", "a"), ("delete", "b")]
    assert h.informer.get("default/a").ports[0].port == 81  # type: ignore[union-attr]
    assert h.informer.get("default/b") is None
    assert h.informer.resource_version == "105"
    call = api.watch_calls[0]
    assert call["rv"] == "102" and call["bookmarks"] is True
    assert 300 <= call["timeout"] <= 600
    # The next watch resumes after the last event: nothing is replayed.
    assert h.informer.run_once() == "watched"
    assert api.watch_calls[1]["rv"] == "105" and h.rec.take() == []


def test_watch_timeouts_are_randomised() -> None:
    h = make()
    h.informer.run_once()
    for _ in range(8):
        h.informer.run_once()
    timeouts = {c["timeout"] for c in h.api.watch_calls}
    assert len(timeouts) > 1 and all(300 <= t <= 600 for t in timeouts)


def test_bookmark_advances_resource_version() -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api)
    h.informer.run_once()
    api.endings.append(Ending("bookmark", bookmark_rv="500"))
    assert h.informer.run_once() == "watched"
    assert h.informer.resource_version == "500" and h.rec.take() == [("add", "a")]
    h.informer.run_once()
    assert api.watch_calls[-1]["rv"] == "500"


def test_gone_relists_and_emits_exactly_the_missed_changes() -> None:
    api = FakeApi()
    for n in ("a", "b", "d"):
        api.put(svc(n))
    h = make(api)
    h.informer.run_once()
    h.rec.take()
    # While the informer is away: add c, change a, delete b, touch d in a way netplane ignores.
    api.put(svc("c"))
    api.put(svc("a", port=8080))
    api.remove("b")
    api.put(svc("d", annotations={"touched": "yes"}))
    api.compact()
    assert h.informer.run_once() == "gone"
    assert h.rec.take() == [] and h.sleeps == []  # re-list at once, no backoff
    assert h.informer.run_once() == "listed"
    # Deletes first, then adds/updates in list order.
    assert h.rec.take() == [("delete", "b"), ("update", "a", "a"), ("add", "c")]
    assert h.informer.resource_version == str(api.rv)
    assert h.informer.get("default/d").resource_version == str(api.rv)  # type: ignore[union-attr]
    assert sorted(h.informer.keys()) == ["default/a", "default/c", "default/d"]
    assert h.informer.run_once() == "watched"
    assert api.watch_calls[-1]["rv"] == str(api.rv)


def test_gone_in_stream_after_events() -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api)
    h.informer.run_once()
    h.rec.take()
    api.put(svc("b"))
    api.endings.append(Ending("gone"))
    assert h.informer.run_once() == "gone"
    assert h.rec.take() == [("add", "b")]
    assert h.informer.run_once() == "listed"
    assert h.rec.take() == []  # nothing else changed


def test_repeated_gone_backs_off() -> None:
    api = FakeApi()
    h = make(api, backoff=Backoff(1.0, 8.0, 0.0))
    h.informer.run_once()
    api.oldest_resumable = 10**9  # every watch is Gone
    assert [h.informer.run_once() for _ in range(6)] == ["gone", "listed"] * 3
    assert h.sleeps == [1.0, 2.0]  # first Gone re-lists at once; repeats back off


def test_connection_drop_resumes_from_last_rv() -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api, backoff=Backoff(0.5, 30.0, 0.2))
    h.informer.run_once()
    h.rec.take()
    api.put(svc("b"))
    api.put(svc("c"))
    api.endings.append(Ending("drop", after=1))
    assert h.informer.run_once() == "watch-failed"
    assert h.rec.take() == [("add", "b")]
    assert len(h.sleeps) == 1 and 0.5 <= h.sleeps[0] <= 0.6
    assert h.informer.resource_version == "102"
    assert h.informer.run_once() == "watched"
    assert api.watch_calls[-1]["rv"] == "102"
    assert h.rec.take() == [("add", "c")]  # no duplicate of b, nothing lost
    assert h.informer.has_synced()


def test_backoff_grows_caps_and_resets() -> None:
    api = FakeApi()
    api.list_errors = [ApiUnavailableError("refused")] * 6
    h = make(api, backoff=(1.0, 10.0, 0.0))
    assert [h.informer.run_once() for _ in range(7)] == ["list-failed"] * 6 + ["listed"]
    assert h.sleeps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert not h.rec.take() and h.informer.has_synced()
    # After success the next failure starts from the initial delay again.
    api.endings.append(Ending("error"))
    assert h.informer.run_once() == "watch-failed"
    assert h.sleeps[-1] == 1.0


def test_backoff_jitter_bounds() -> None:
    rng = random.Random(1)
    b = Backoff(1.0, 30.0, 0.5)
    for n in range(1, 10):
        base = min(30.0, 2 ** (n - 1))
        d = b.delay(n, rng)
        assert base <= d <= base * 1.5
    assert b.delay(0, rng) == 0.0


def test_server_error_in_watch_backs_off_and_resumes() -> None:
    api = FakeApi()
    h = make(api, backoff=(2.0, 10.0, 0.0))
    h.informer.run_once()
    api.put(svc("x"))
    api.endings.append(Ending("error", after=0))
    assert h.informer.run_once() == "watch-failed"
    assert h.sleeps == [2.0]
    assert h.informer.run_once() == "watched"
    assert h.rec.take() == [("add", "x")]


def test_instantly_ending_empty_watch_backs_off() -> None:
    h = make(backoff=(1.0, 10.0, 0.0))
    h.informer.run_once()
    h.api.endings += [Ending(duration=0), Ending(duration=0), Ending(duration=5)]
    assert h.informer.run_once() == "watch-failed"
    assert h.informer.run_once() == "watch-failed"
    assert h.sleeps == [1.0, 2.0]
    # Lasting a few seconds is fine, as is ending at once after delivering something.
    assert h.informer.run_once() == "watched"
    h.api.put(svc("x"))
    h.api.endings += [Ending(duration=0)]
    assert h.informer.run_once() == "watched"
    assert h.sleeps == [1.0, 2.0]


def test_handler_exception_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api)
    seen: list[str] = []

    def boom(obj: Any) -> None:
        raise RuntimeError("handler bug")

    # The failing handler is registered before a healthy one; both run for every event.
    h.informer.add_handler(on_add=boom)
    h.informer.add_handler(on_add=lambda o: seen.append(o.name))
    with caplog.at_level(logging.ERROR, logger="netplane.k8s.informer"):
        assert h.informer.run_once() == "listed"
        api.put(svc("b"))
        assert h.informer.run_once() == "watched"
    assert seen == ["a", "b"]
    assert h.rec.take() == [("add", "a"), ("add", "b")]
    assert sum("handler bug" in (r.exc_text or "") for r in caplog.records) == 2
    assert h.informer.get("default/b") is not None


def test_noop_update_is_filtered_but_cache_advances() -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api)
    h.informer.run_once()
    h.rec.take()
    api.put(svc("a", annotations={"unrelated": "change"}, labels={}))
    h.informer.run_once()
    assert h.rec.take() == []
    assert h.informer.get("default/a").resource_version == "102"  # type: ignore[union-attr]
    api.put(svc("a", port=9090))
    h.informer.run_once()
    assert h.rec.take() == [("update", "a", "a")]


def test_update_handler_gets_old_and_new() -> None:
    api = FakeApi()
    api.put(svc("a", port=1))
    h = make(api)
    pairs: list[tuple[int, int]] = []
    h.informer.add_handler(on_update=lambda old, new: pairs.append(
        (old.ports[0].port, new.ports[0].port)))
    h.informer.run_once()
    api.put(svc("a", port=2))
    h.informer.run_once()
    assert pairs == [(1, 2)]


def _slice(name: str, service: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": [ip]}]}


def test_indexers() -> None:
    api = FakeApi()
    api.put(_slice("web-1", "web", "10.0.0.1"))
    api.put(_slice("web-2", "web", "10.0.0.2"))
    api.put(_slice("db-1", "db", "10.0.0.3"))
    h = make(api, convert=EndpointSlice.from_dict,
             indexers={"by_service": lambda s: [s.service_key],
                       "by_ip": lambda s: [a for e in s.endpoints for a in e.addresses]})
    h.informer.run_once()
    inf = h.informer
    assert [s.name for s in inf.by_index("by_service", "default/web")] == ["web-1", "web-2"]
    assert [s.name for s in inf.by_index("by_ip", "10.0.0.3")] == ["db-1"]
    assert inf.by_index("by_service", "default/nope") == []
    with pytest.raises(KeyError, match="by_nothing"):
        inf.by_index("by_nothing", "x")
    # An update that moves an object between index values, and a delete.
    api.put(_slice("web-2", "db", "10.0.0.9"))
    api.remove("web-1")
    inf.run_once()
    assert inf.by_index("by_service", "default/web") == []
    assert [s.name for s in inf.by_index("by_service", "default/db")] == ["db-1", "web-2"]
    assert inf.by_index("by_ip", "10.0.0.2") == []
    assert [s.name for s in inf.by_index("by_ip", "10.0.0.9")] == ["web-2"]
    assert inf._indices["by_service"].keys() == {"default/db"}  # emptied values are dropped
    # A re-list rebuilds the indexes from scratch.
    api.put(_slice("web-3", "web", "10.0.0.4"))
    api.compact()
    inf.run_once()
    inf.run_once()
    assert [s.name for s in inf.by_index("by_service", "default/web")] == ["web-3"]


def test_failing_indexer_does_not_break_cache(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi()
    api.put(svc("a"))

    def bad(obj: Any) -> list[str]:
        raise ValueError("indexer bug")

    h = make(api, indexers={"bad": bad})
    with caplog.at_level(logging.ERROR):
        h.informer.run_once()
    assert h.informer.get("default/a") is not None and h.informer.by_index("bad", "x") == []


def test_expired_continue_restarts_then_lists_unpaged() -> None:
    api = FakeApi()
    for n in "abcde":
        api.put(svc(n))
    api.continue_expired = 1
    h = make(api, page_size=2)
    assert h.informer.run_once() == "listed"
    assert [c["continue"] for c in api.list_calls] == [None, "105:2", None, "105:2", "105:4"]
    assert len(h.informer) == 5 and h.sleeps == []
    api2 = FakeApi()
    for n in "abcde":
        api2.put(svc(n))
    api2.continue_expired = 2
    h2 = make(api2, page_size=2)
    assert h2.informer.run_once() == "listed"
    assert [(c["continue"], c["limit"]) for c in api2.list_calls][-1] == (None, None)
    assert len(h2.informer) == 5


def test_late_handler_gets_existing_objects_first() -> None:
    api = FakeApi()
    api.put(svc("a"))
    api.put(svc("b"))
    h = make(api)
    h.informer.run_once()
    late = Recorder()
    h.informer.add_handler(late.add, late.update, late.delete)
    assert sorted(late.take()) == [("add", "a"), ("add", "b")]
    api.remove("a")
    h.informer.run_once()
    assert late.take() == [("delete", "a")]


def test_convert_none_excludes_and_convert_error_skips(caplog: pytest.LogCaptureFixture) -> None:
    def only_port_80(d: dict[str, Any]) -> Service | None:
        if d["metadata"]["name"] == "explode":
            raise RuntimeError("converter bug")
        s = Service.from_dict(d)
        return s if s.ports and s.ports[0].port == 80 else None

    api = FakeApi()
    api.put(svc("a", port=80))
    api.put(svc("b", port=81))
    api.put(svc("explode"))
    h = make(api, convert=only_port_80)
    with caplog.at_level(logging.ERROR):
        h.informer.run_once()
    assert h.informer.keys() == ["default/a"]
    assert h.rec.take() == [("add", "a")]
    # a stops matching: it leaves the cache as a delete; b starts matching: an add.
    api.put(svc("a", port=81))
    api.put(svc("b", port=80))
    h.informer.run_once()
    assert h.rec.take() == [("delete", "a"), ("add", "b")]
    assert h.informer.keys() == ["default/b"]


def test_delete_handler_gets_final_state() -> None:
    api = FakeApi()
    api.put(svc("a", port=1))
    h = make(api)
    got: list[int] = []
    h.informer.add_handler(on_delete=lambda s: got.append(s.ports[0].port))
    h.informer.run_once()
    api.put(svc("a", port=2))
    api.remove("a")
    h.informer.run_once()
    assert got == [2]
    # Deleting something never seen emits nothing.
    api.history.append((api.rv + 1, WatchEvent("DELETED", svc("ghost"))))
    h.informer.run_once()
    assert got == [2]


def test_periodic_relist() -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api, relist_period=100.0)
    h.informer.run_once()
    assert h.informer.run_once() == "watched"  # lasts 60s
    assert api.watch_calls[-1]["timeout"] == 100  # capped at the re-list deadline
    assert h.informer.run_once() == "watched"
    assert api.watch_calls[-1]["timeout"] == 40
    assert h.informer.run_once() == "listed"
    assert h.rec.take() == [("add", "a")]  # the re-list found nothing new
    assert h.informer.run_once() == "watched"


def test_start_stop_closes_blocked_watch_promptly() -> None:
    api = FakeApi()
    api.put(svc("a"))
    api.endings.append(Ending("block"))
    inf: Informer[Service] = Informer(api, PATH, Service.from_dict)
    got: list[str] = []
    inf.add_handler(on_add=lambda s: got.append(s.name))
    inf.start()
    assert inf.wait_for_sync(5)
    deadline = time.monotonic() + 5
    while not api.watches and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    inf.stop(timeout=5)
    assert time.monotonic() - started < 2
    assert inf._thread is not None and not inf._thread.is_alive()
    assert api.watches[0].closed.is_set() and got == ["a"] and inf.stopped
    assert inf.run_once() == "stopped"
    # Restart: keeps the cache and resumes the watch from where it stopped.
    api.put(svc("b"))
    api.endings.append(Ending("block"))
    inf.start()
    with pytest.raises(RuntimeError, match="already running"):
        inf.start()
    deadline = time.monotonic() + 5
    while got != ["a", "b"] and time.monotonic() < deadline:
        time.sleep(0.01)
    inf.stop(timeout=5)
    assert got == ["a", "b"] and len(api.list_calls) == 1
    assert api.watch_calls[-1]["rv"] == api.watch_calls[0]["rv"] == "101"


def test_stop_interrupts_backoff_sleep() -> None:
    api = FakeApi()
    api.list_errors = [ApiUnavailableError("refused")] * 100
    inf: Informer[Service] = Informer(api, PATH, Service.from_dict, backoff=(60.0, 60.0, 0.0))
    inf.start()
    deadline = time.monotonic() + 5
    while not api.list_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    inf.stop(timeout=5)
    assert time.monotonic() - started < 2 and not inf.has_synced()


def test_run_with_iterations() -> None:
    api = FakeApi()
    api.put(svc("a"))
    h = make(api)
    h.informer.run(iterations=1)
    assert h.informer.has_synced() and api.watch_calls == []
