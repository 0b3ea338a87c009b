"""List-then-watch cache of one resource collection, with change notifications.

The loop (the same contract as client-go's reflector):

1. **list** the collection in pages (`limit`, following `continue`). An expired continue token
   (410) restarts the list, and a second expiry falls back to one unpaged list, as client-go's
   pager does. The result *replaces* the cache and the difference to the previous cache is
   emitted as adds/updates/deletes (only adds the first time). The informer is then synced.
2. **watch** from the list's resourceVersion with bookmarks on, applying each event to the cache
   and following BOOKMARK resourceVersions, so a reconnect resumes from the newest point the
   server told us about even when nothing we select changed. Each watch asks the server to end it
   after a random 5-10 minutes, so connections get recycled (and rebalanced) regularly.
3. A watch that ends normally is re-opened from the last resourceVersion. A broken connection or
   server error re-opens it after a jittered exponential backoff. **410 Gone** (the server no
   longer has our resourceVersion) goes back to step 1: the re-list's diff is exactly the set of
   changes that happened while we were away.

Objects are converted at ingest (see `netplane.k8s.objects`) and updates whose converted values
are equal are dropped, so handlers only hear about changes netplane cares about.

Handlers run on the informer's thread and must only enqueue work (put a key on a queue, set an
event): a slow handler delays every later event of this informer, and the state to act on is
always re-read from the cache (`get`, `list`, `by_index`) by whoever drains the queue.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from netplane.errors import ApiError, GoneError, NetplaneError
from netplane.k8s.client import WatchEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 500
# Seconds; each watch asks the server to end it after a random time in this range.
DEFAULT_WATCH_TIMEOUT = (300.0, 600.0)
# A watch that ends this quickly without delivering anything counts as a failure for backoff, so
# a server that immediately closes watches is not hammered in a tight loop.
_SUSPICIOUSLY_SHORT_WATCH = 1.0


class WatchStream(Protocol):
    """What `watch` returns: an iterator of events that can be closed from another thread."""

    def __iter__(self) -> Iterator[WatchEvent]: ...

    def close(self) -> None: ...


class ListWatcher(Protocol):
    """The part of `netplane.k8s.client.Client` an informer needs (fakes implement just this)."""

    def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...

    def watch(
        self,
        path: str,
        *,
        resource_version: str,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> WatchStream: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry n (n >= 1): min(maximum, initial * 2**(n-1)), plus up to
    `jitter` x that at random so many informers restarting together spread out."""

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random) -> float:
        if failures <= 0:
            return 0.0
        base = min(self.maximum, self.initial * (2 ** min(failures - 1, 30)))
        return base * (1.0 + self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class _Handler(Generic[T]):
    on_add: Callable[[T], object] | None
    on_update: Callable[[T, T], object] | None
    on_delete: Callable[[T], object] | None


def object_key(raw: Mapping[str, Any]) -> str:
    """namespace/name (or name for cluster-scoped objects), from a raw API object."""
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    if not isinstance(meta, Mapping):
        return ""
    name = meta.get("name")
    namespace = meta.get("namespace")
    if not isinstance(name, str) or not name:
        return ""
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def _list_rv(listing: Mapping[str, Any]) -> str:
    meta = listing.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


Indexer = Callable[[Any], Iterable[str]]


class Informer(Generic[T]):
    """A synced, indexed cache of `path` (a collection path such as "/api/v1/services").

    `convert(raw_dict)` turns each object into the cached value (e.g. `Service.from_dict`); it
    may return None to leave an object out (a MODIFIED event that converts to None removes it).
    Keys are namespace/name from the raw metadata.
    """

    def __init__(
        self,
        client: ListWatcher,
        path: str,
        convert: Callable[[dict[str, Any]], T | None],
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, Indexer] | None = None,
        name: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        relist_period: float | None = None,
        watch_timeout: tuple[float, float] = DEFAULT_WATCH_TIMEOUT,
        backoff: Backoff | tuple[float, float, float] = Backoff(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self.path = path
        self._convert = convert
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._indexers: dict[str, Indexer] = dict(indexers or {})
        self.name = name or path
        self._page_size = page_size
        # A periodic full re-list is a safety net against a consumer-visible divergence (it emits
        # only real differences, unlike client-go's resync which replays every object).
        self._relist_period = relist_period
        self._watch_timeout = watch_timeout
        self._backoff = backoff if isinstance(backoff, Backoff) else Backoff(*backoff)
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._rng = rng or random.Random()

        # Cache state, guarded by _lock. Written only by the informer thread.
        self._lock = threading.Lock()
        self._items: dict[str, T] = {}
        self._indices: dict[str, dict[str, set[str]]] = {n: {} for n in self._indexers}
        self._rv = ""
        # Held across "change cache + notify handlers", so add_handler can replay a consistent
        # snapshot to a late handler. Reentrant: a handler may call add_handler.
        self._dispatch_lock = threading.RLock()
        self._handlers: list[_Handler[T]] = []

        self._synced = threading.Event()
        self._need_list = True
        self._last_list: float | None = None
        self._failures = 0
        self._gone_streak = 0
        self._watch_lock = threading.Lock()
        self._watch: WatchStream | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ reading

    def get(self, key: str) -> T | None:
        with self._lock:
            return self._items.get(key)

    def list(self) -> list[T]:
        with self._lock:
            return list(self._items.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def snapshot(self) -> Mapping[str, T]:
        """A read-only copy of the whole cache, consistent as of one instant."""
        with self._lock:
            return MappingProxyType(dict(self._items))

    def by_index(self, index_name: str, value: str) -> list[T]:
        """Objects whose indexer `index_name` produced `value`, ordered by key."""
        with self._lock:
            try:
                index = self._indices[index_name]
            except KeyError:
                raise KeyError(f"informer {self.name}: no indexer named {index_name!r}") from None
            return [self._items[k] for k in sorted(index.get(value, ()))]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion seen (list, event or bookmark); where a watch resumes."""
        with self._lock:
            return self._rv

    def has_synced(self) -> bool:
        """True once the first complete list is in the cache and its adds were delivered."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # ----------------------------------------------------------------------------- handlers

    def add_handler(
        self,
        on_add: Callable[[T], object] | None = None,
        on_update: Callable[[T, T], object] | None = None,
        on_delete: Callable[[T], object] | None = None,
    ) -> None:
        """Register callbacks, run on the informer thread: on_add(obj), on_update(old, new)
        (never for equal values), on_delete(last known obj).

        Callbacks must only enqueue work. An exception is logged and otherwise ignored. A handler
        added after objects are cached first gets on_add for each of them, delivered here on the
        caller's thread, before any later event.
        """
        handler: _Handler[T] = _Handler(on_add, on_update, on_delete)
        with self._dispatch_lock:
            if on_add is not None:
                for obj in self.list():
                    self._call(handler, "add", obj)
            self._handlers.append(handler)

    def _call(self, handler: _Handler[T], kind: str, *args: T) -> None:
        fn = {"add": handler.on_add, "update": handler.on_update,
              "delete": handler.on_delete}[kind]
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("informer %s: %s handler %r failed", self.name, kind, fn)

    def _notify(self, kind: str, *args: T) -> None:
        for handler in list(self._handlers):
            self._call(handler, kind, *args)

    # ------------------------------------------------------------------------------ running

    def start(self) -> None:
        """Run in a daemon thread until `stop()`.

        Starting again after `stop()` resumes with the cache and resourceVersion kept: the watch
        picks up where it left off, or re-lists (emitting what changed meanwhile) when the
        server no longer has that resourceVersion.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"informer {self.name} already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"informer {self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: closes the open watch (waking the thread) and joins the thread.

        A list request in flight is not interrupted; it ends within the client's timeout.
        """
        self._stop.set()
        with self._watch_lock:
            watch = self._watch
        if watch is not None:
            try:
                watch.close()
            except Exception:
                log.debug("informer %s: closing the watch failed", self.name, exc_info=True)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("informer %s: thread did not stop within %.1fs", self.name, timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self, iterations: int | None = None) -> None:
        """The informer loop; `iterations` bounds it (for tests), None runs until stopped."""
        done = 0
        while not self._stop.is_set() and (iterations is None or done < iterations):
            self.run_once()
            done += 1

    def run_once(self) -> str:
        """One step: a list (when needed) or one watch connection until it ends.

        Returns what happened, for tests and logs: "listed", "list-failed", "watched",
        "watch-failed", "gone" or "stopped". Failures sleep their backoff before returning.
        """
        if self._stop.is_set():
            return "stopped"
        try:
            if self._need_list or self._relist_due():
                return self._list_step()
            return self._watch_step()
        except Exception:
            # Never let a bug (in a converter, say) kill the informer thread for good.
            delay = self._next_delay()
            log.exception("informer %s: unexpected error; retrying in %.1fs", self.name, delay)
            self._sleep(delay)
            return "list-failed" if self._need_list else "watch-failed"

    # ------------------------------------------------------------------------------ listing

    def _relist_due(self) -> bool:
        return (self._relist_period is not None and self._last_list is not None
                and self._clock() - self._last_list >= self._relist_period)

    def _list_pages(self, limit: int | None) -> tuple[list[Any], str]:
        items: list[Any] = []
        rv = ""
        continue_: str | None = None
        first = True
        while True:
            page = self._client.list(
                self.path, label_selector=self._label_selector,
                field_selector=self._field_selector, limit=limit, continue_=continue_,
            )
            if first:
                # Every page of one list is from the first page's snapshot.
                rv = _list_rv(page)
                first = False
            page_items = page.get("items")
            if isinstance(page_items, list):
                items.extend(page_items)
            meta = page.get("metadata")
            continue_ = meta.get("continue") if isinstance(meta, Mapping) else None
            if not continue_ or self._stop.is_set():
                return items, rv

    def _list_complete(self) -> tuple[list[Any], str]:
        try:
            return self._list_pages(self._page_size or None)
        except GoneError:
            log.info("informer %s: list continue token expired; restarting the list", self.name)
        try:
            return self._list_pages(self._page_size or None)
        except GoneError:
            log.info("informer %s: continue token expired again; listing unpaged", self.name)
        return self._list_pages(None)

    def _list_step(self) -> str:
        try:
            raw_items, rv = self._list_complete()
        except NetplaneError as exc:
            if self._stop.is_set():
                return "stopped"
            delay = self._next_delay()
            log.warning("informer %s: list failed (%s); retrying in %.1fs",
                        self.name, exc, delay)
            self._sleep(delay)
            return "list-failed"
        if self._stop.is_set():
            return "stopped"
        self._replace(raw_items, rv)
        self._need_list = False
        self._last_list = self._clock()
        self._failures = 0
        if not self._synced.is_set():
            log.info("informer %s: synced %d objects at resourceVersion %s",
                     self.name, len(self), rv)
            self._synced.set()
        return "listed"

    def _convert_one(self, raw: Any) -> T | None:
        try:
            return self._convert(raw)
        except Exception:
            log.exception("informer %s: converting %s failed; ignoring it", self.name,
                          object_key(raw) or "an object")
            return None

    def _index_values(self, obj: T) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, fn in self._indexers.items():
            try:
                out[name] = [v for v in fn(obj) if isinstance(v, str)]
            except Exception:
                log.exception("informer %s: indexer %s failed", self.name, name)
                out[name] = []
        return out

    def _index_add(self, key: str, obj: T) -> None:
        for name, values in self._index_values(obj).items():
            index = self._indices[name]
            for v in values:
                index.setdefault(v, set()).add(key)

    def _index_remove(self, key: str, obj: T) -> None:
        for name, values in self._index_values(obj).items():
            index = self._indices[name]
            for v in values:
                keys = index.get(v)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[v]

    def _replace(self, raw_items: list[Any], rv: str) -> None:
        new: dict[str, T] = {}
        for raw in raw_items:
            key = object_key(raw)
            if not key:
                continue
            obj = self._convert_one(raw)
            if obj is not None:
                new[key] = obj
        with self._dispatch_lock:
            with self._lock:
                old = self._items
                self._items = new
                self._indices = {n: {} for n in self._indexers}
                for key, obj in new.items():
                    self._index_add(key, obj)
                self._rv = rv
            # Deletes first: a replacement object may reuse what the deleted one held (an IP).
            deleted = [obj for key, obj in old.items() if key not in new]
            for obj in deleted:
                self._notify("delete", obj)
            adds = updates = 0
            for key, obj in new.items():
                prev = old.get(key)
                if prev is None:
                    adds += 1
                    self._notify("add", obj)
                elif prev != obj:
                    updates += 1
                    self._notify("update", prev, obj)
        if old:
            log.info("informer %s: re-listed at resourceVersion %s: %d added, %d updated, "
                     "%d deleted", self.name, rv, adds, updates, len(deleted))

    # ----------------------------------------------------------------------------- watching

    def _watch_timeout_seconds(self) -> int:
        low, high = self._watch_timeout
        timeout = self._rng.uniform(low, high)
        if self._relist_period is not None and self._last_list is not None:
            # End the watch in time for the periodic re-list.
            remaining = self._relist_period - (self._clock() - self._last_list)
            timeout = min(timeout, max(1.0, remaining))
        return max(1, int(timeout))

    def _watch_step(self) -> str:
        started = self._clock()
        delivered = 0
        stream: WatchStream | None = None
        try:
            stream = self._client.watch(
                self.path, resource_version=self._rv, allow_bookmarks=True,
                timeout_seconds=self._watch_timeout_seconds(),
                label_selector=self._label_selector, field_selector=self._field_selector,
            )
            with self._watch_lock:
                self._watch = stream
            if self._stop.is_set():
                return "stopped"
            for event in stream:
                if self._stop.is_set():
                    return "stopped"
                self._apply(event)
                delivered += 1
                if self._relist_due():
                    break
        except GoneError as exc:
            if self._stop.is_set():
                return "stopped"
            log.info("informer %s: resourceVersion %s is gone (%s); re-listing",
                     self.name, self._rv, exc.message or exc.reason)
            self._need_list = True
            if delivered:
                self._gone_streak = 0
            else:
                # Gone straight after a re-list, again: re-listing is not helping (the server
                # keeps too little history for our pace), so back off instead of spinning.
                self._gone_streak += 1
                if self._gone_streak > 1:
                    self._sleep(self._backoff.delay(self._gone_streak - 1, self._rng))
            return "gone"
        except NetplaneError as exc:
            if self._stop.is_set():
                return "stopped"
            if delivered:
                self._failures = 0  # the connection worked for a while: start backoff afresh
            delay = self._next_delay()
            kind = f"error {exc.code} {exc.reason}" if isinstance(exc, ApiError) else "lost"
            log.warning("informer %s: watch %s (%s); resuming from resourceVersion %s in %.1fs",
                        self.name, kind, exc, self._rv, delay)
            self._sleep(delay)
            return "watch-failed"
        finally:
            with self._watch_lock:
                self._watch = None
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    log.debug("informer %s: closing the watch failed", self.name, exc_info=True)
        if self._stop.is_set():
            return "stopped"
        if delivered == 0 and self._clock() - started < _SUSPICIOUSLY_SHORT_WATCH:
            delay = self._next_delay()
            log.warning("informer %s: watch ended at once without events; retrying in %.1fs",
                        self.name, delay)
            self._sleep(delay)
            return "watch-failed"
        self._failures = 0
        self._gone_streak = 0
        log.debug("informer %s: watch ended after %d events at resourceVersion %s",
                  self.name, delivered, self._rv)
        return "watched"

    def _next_delay(self) -> float:
        """Count a failure and return how long to back off before the next attempt."""
        self._failures += 1
        return self._backoff.delay(self._failures, self._rng)

    def _apply(self, event: WatchEvent) -> None:
        rv = event.resource_version
        etype = event.type
        if etype == "BOOKMARK":
            if rv:
                with self._lock:
                    self._rv = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.debug("informer %s: ignoring watch event of type %r", self.name, etype)
            return
        key = object_key(event.object)
        if not key:
            log.warning("informer %s: %s event without a name; ignoring it", self.name, etype)
            if rv:
                with self._lock:
                    self._rv = rv
            return
        obj = None if etype == "DELETED" else self._convert_one(event.object)
        with self._dispatch_lock:
            with self._lock:
                old = self._items.get(key)
                if old is not None:
                    self._index_remove(key, old)
                if obj is None:
                    self._items.pop(key, None)
                else:
                    self._items[key] = obj
                    self._index_add(key, obj)
                if rv:
                    self._rv = rv
            if obj is None:
                if old is not None:
                    # The final state from the event when it converts; else the cached one.
                    final = self._convert_one(event.object) if etype == "DELETED" else None
                    self._notify("delete", final if final is not None else old)
            elif old is None:
                self._notify("add", obj)
            elif old != obj:
                self._notify("update", old, obj)
