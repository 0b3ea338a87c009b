"""Object storage for the embedded apiserver: the current objects, one global resourceVersion,
and a bounded log of change events that watches read from.

Objects are plain JSON dicts that are never mutated once stored (a change stores a new dict), so
readers (lists, watch streams, paginated snapshots) can hold references without copying. Each
stored object keeps its serialised JSON next to it: lists and watches join cached bytes instead
of re-encoding 100k objects.

Persistence is a port: `MemoryPersistence` keeps nothing, `SqlitePersistence` writes every
change through to DIR/state.sqlite so a restart keeps objects and the resourceVersion counter.
The event log is not persisted: after a restart, a watch from an older resourceVersion gets
410 Gone and the client re-lists, exactly as when the log was compacted.
"""

from __future__ import annotations

import bisect
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

ObjKey = tuple[str, str]  # (namespace or "", name)


@dataclass(slots=True)
class Stored:
    obj: dict[str, Any]
    raw: bytes  # orjson encoding of obj

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Stored:
        return cls(obj, orjson.dumps(obj))


@dataclass(slots=True)
class Event:
    seq: int  # position in the log since the process started (never reused)
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rkey: str  # ResourceType.key
    namespace: str
    name: str
    new: Stored  # the object after the change (for DELETED: its final state at this rv)
    old: Stored | None  # the object before the change (None for ADDED)
    _line: bytes | None = field(default=None, repr=False)

    def json_line(self) -> bytes:
        """`{"type":...,"object":...}\n`, encoded once and shared by every plain-JSON watcher."""
        if self._line is None:
            self._line = b'{"type":"' + self.type.encode() + b'","object":' + self.new.raw + b"}\n"
        return self._line


class Persistence(Protocol):
    def load(self) -> tuple[int, Iterator[tuple[str, str, str, bytes]]]: ...
    def put(self, rv: int, rkey: str, namespace: str, name: str, raw: bytes | None) -> None: ...
    def close(self) -> None: ...


class MemoryPersistence:
    """No persistence: the state lives and dies with the process."""

    def load(self) -> tuple[int, Iterator[tuple[str, str, str, bytes]]]:
        return 0, iter(())

    def put(self, rv: int, rkey: str, namespace: str, name: str, raw: bytes | None) -> None:
        pass

    def close(self) -> None:
        pass


class SqlitePersistence:
    """Write-through sqlite file. Every change is one small transaction (WAL, synchronous=NORMAL:
    durable against a process crash, which is what a restartable local apiserver needs)."""

    def __init__(self, data_dir: str):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(data_dir, "state.sqlite")
        # All calls happen under the Store lock, so one connection shared across threads is safe.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (rkey TEXT NOT NULL, namespace TEXT NOT NULL, "
            "name TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (rkey, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")

    def load(self) -> tuple[int, Iterator[tuple[str, str, str, bytes]]]:
        row = self._db.execute("SELECT value FROM meta WHERE key='resourceVersion'").fetchone()
        rv = int(row[0]) if row else 0
        rows = self._db.execute("SELECT rkey, namespace, name, data FROM objects").fetchall()
        return rv, iter(rows)

    def put(self, rv: int, rkey: str, namespace: str, name: str, raw: bytes | None) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            if raw is None:
                db.execute(
                    "DELETE FROM objects WHERE rkey=? AND namespace=? AND name=?",
                    (rkey, namespace, name),
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
                    (rkey, namespace, name, raw),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('resourceVersion', ?)", (str(rv),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


class Store:
    """Current objects per resource, the global resourceVersion and the watch event log.

    `lock` guards everything; the API layer holds it across read-compute-commit so that
    validation, allocation and the write are one atomic step. `changed` is notified on every
    commit and wakes watch streams.
    """

    def __init__(self, persistence: Persistence | None = None, history: int = 100_000):
        if history < 1:
            raise ValueError("history must be at least 1 event")
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._persistence = persistence or MemoryPersistence()
        self._history = history
        self._objects: dict[str, dict[ObjKey, Stored]] = {}
        self._log: list[Event] = []
        self._log_rvs: list[int] = []
        self._dropped = 0  # events removed from the front of the log so far (seq offset)
        rv, rows = self._persistence.load()
        for rkey, ns, name, raw in rows:
            self._objects.setdefault(rkey, {})[(ns, name)] = Stored(orjson.loads(raw), bytes(raw))
        self.rv = rv
        # Nothing before this version can be replayed (history is not persisted).
        self.compacted_rv = rv
        self.closed = False

    # -- reads (callers hold `lock` when they need several reads to agree) -------------------------

    def get(self, rkey: str, namespace: str, name: str) -> Stored | None:
        return self._objects.get(rkey, {}).get((namespace, name))

    def items(self, rkey: str, namespace: str | None = None) -> list[tuple[ObjKey, Stored]]:
        """Objects of one resource sorted by (namespace, name), as etcd's key order lists them."""
        objs = self._objects.get(rkey, {})
        if namespace is None:
            return sorted(objs.items())
        return sorted((k, v) for k, v in objs.items() if k[0] == namespace)

    def count(self, rkey: str) -> int:
        return len(self._objects.get(rkey, {}))

    def all_items(self) -> Iterable[tuple[str, ObjKey, Stored]]:
        for rkey, objs in self._objects.items():
            for k, v in objs.items():
                yield rkey, k, v

    # -- writes ------------------------------------------------------------------------------------

    def next_rv(self) -> int:
        return self.rv + 1

    def commit(
        self, rkey: str, namespace: str, name: str, obj: dict[str, Any] | None, event_type: str
    ) -> Stored:
        """Store (or with obj=None, remove) an object at resourceVersion next_rv().

        For a delete the caller passes the object's final state stamped with the new version as
        `obj` and event_type DELETED; it is logged for watchers and removed from storage.
        """
        with self.lock:
            rv = self.rv + 1
            assert obj is not None
            stored = Stored.of(obj)
            objs = self._objects.setdefault(rkey, {})
            old = objs.get((namespace, name))
            self._persistence.put(
                rv, rkey, namespace, name, None if event_type == "DELETED" else stored.raw
            )
            if event_type == "DELETED":
                objs.pop((namespace, name), None)
            else:
                objs[(namespace, name)] = stored
            self.rv = rv
            seq = self._dropped + len(self._log)
            self._log.append(Event(seq, rv, event_type, rkey, namespace, name, stored, old))
            self._log_rvs.append(rv)
            self._compact()
            self.changed.notify_all()
            return stored

    def _compact(self) -> None:
        # Drop in halves so trimming stays amortised O(1) per event.
        if len(self._log) > 2 * self._history:
            cut = len(self._log) - self._history
            self.compacted_rv = self._log[cut - 1].rv
            del self._log[:cut]
            del self._log_rvs[:cut]
            self._dropped += cut

    def compact_all(self) -> None:
        """Forget the whole event log (an admin/test hook: every older watch gets 410)."""
        with self.lock:
            self._dropped += len(self._log)
            self._log.clear()
            self._log_rvs.clear()
            self.compacted_rv = self.rv
            self.changed.notify_all()

    # -- the event log, for watches -----------------------------------------------------------------

    def seq_after(self, rv: int) -> int | None:
        """The log position of the first event newer than rv, or None when rv is too old."""
        if rv < self.compacted_rv:
            return None
        return self._dropped + bisect.bisect_right(self._log_rvs, rv)

    def head_seq(self) -> int:
        return self._dropped + len(self._log)

    def events_from(self, seq: int, max_events: int = 1000) -> list[Event] | None:
        """Up to max_events events starting at log position seq; None if they were compacted."""
        if seq < self._dropped:
            return None
        start = seq - self._dropped
        return self._log[start : start + max_events]

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()
            self._persistence.close()
