"""The apiserver Store: the global resourceVersion, the watch event log and its compaction, and
sqlite persistence across restarts. Pure: no sockets, no threads."""

from __future__ import annotations

import orjson
import pytest

from netplane.apiserver.store import MemoryPersistence, SqlitePersistence, Store, Stored

RKEY = "core/configmaps"


def cm(name: str, ns: str = "default", rv: int | None = None, **data: str) -> dict:
    meta: dict = {"name": name, "namespace": ns}
    if rv is not None:
        meta["resourceVersion"] = str(rv)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}


def put(store: Store, name: str, event: str = "ADDED", ns: str = "default", **data: str) -> Stored:
    return store.commit(RKEY, ns, name, cm(name, ns, store.next_rv(), **data), event)


# -- resourceVersion and the event log ---------------------------------------------------------------


def test_rv_starts_at_zero_and_increases_by_one_per_commit():
    store = Store()
    assert store.rv == 0 and store.next_rv() == 1
    seen = []
    for i in range(5):
        s = put(store, f"c{i}")
        seen.append(store.rv)
        assert s.obj["metadata"]["resourceVersion"] == str(store.rv)
    put(store, "c0", "MODIFIED", a="1")
    seen.append(store.rv)
    put(store, "c1", "DELETED")
    seen.append(store.rv)
    assert seen == list(range(1, 8))
    assert store.next_rv() == 8


def test_stored_keeps_its_json_encoding():
    store = Store()
    s = put(store, "a", x="1")
    assert orjson.loads(s.raw) == s.obj
    assert store.get(RKEY, "default", "a") is s


def test_events_carry_old_and_new_objects():
    store = Store()
    put(store, "a", x="1")
    put(store, "a", "MODIFIED", x="2")
    put(store, "a", "DELETED", x="2")
    events = store.events_from(0)
    assert [e.type for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert [e.rv for e in events] == [1, 2, 3]
    assert [e.seq for e in events] == [0, 1, 2]
    added, modified, deleted = events
    assert added.old is None and added.new.obj["data"] == {"x": "1"}
    assert modified.old is added.new and modified.new.obj["data"] == {"x": "2"}
    assert deleted.old is modified.new
    assert deleted.new.obj["metadata"]["resourceVersion"] == "3"
    assert (deleted.rkey, deleted.namespace, deleted.name) == (RKEY, "default", "a")
    assert store.get(RKEY, "default", "a") is None
    line = orjson.loads(deleted.json_line())
    assert line == {"type": "DELETED", "object": deleted.new.obj}
    assert deleted.json_line() is deleted.json_line()  # encoded once


def test_items_are_sorted_and_filtered_by_namespace():
    store = Store()
    for ns, name in [("b", "z"), ("a", "y"), ("b", "a"), ("a", "x")]:
        put(store, name, ns=ns)
    assert [k for k, _ in store.items(RKEY)] == [("a", "x"), ("a", "y"), ("b", "a"), ("b", "z")]
    assert [k for k, _ in store.items(RKEY, "b")] == [("b", "a"), ("b", "z")]
    assert store.items("core/nothing") == []
    assert store.count(RKEY) == 4
    assert len(list(store.all_items())) == 4


def test_seq_after_finds_the_first_newer_event():
    store = Store()
    for i in range(5):
        put(store, f"c{i}")  # rv 1..5, seq 0..4
    assert store.seq_after(0) == 0
    assert store.seq_after(3) == 3
    assert store.seq_after(5) == 5 == store.head_seq()
    assert store.seq_after(99) == 5  # a future version: wait for new events
    assert [e.rv for e in store.events_from(store.seq_after(3))] == [4, 5]
    assert store.events_from(5) == []
    assert [e.rv for e in store.events_from(0, max_events=2)] == [1, 2]


def test_history_must_be_positive():
    with pytest.raises(ValueError):
        Store(history=0)


def test_compaction_keeps_the_newest_history_events():
    store = Store(history=3)
    for i in range(6):
        put(store, f"c{i}")
    # 2 x history events are still kept: compaction starts above that.
    assert len(store.events_from(0)) == 6
    assert store.compacted_rv == 0
    put(store, "c6")  # 7 > 2*3: trim to the newest 3
    assert store.compacted_rv == 4
    assert store.events_from(0) is None
    assert store.events_from(3) is None
    kept = store.events_from(4)
    assert [e.rv for e in kept] == [5, 6, 7]
    assert [e.seq for e in kept] == [4, 5, 6]  # log positions are never reused
    assert store.head_seq() == 7
    # Versions older than the compacted one cannot be resumed from; the compacted one itself
    # can (everything after it is still in the log).
    assert store.seq_after(0) is None
    assert store.seq_after(3) is None
    assert store.seq_after(4) == 4
    assert store.seq_after(6) == 6
    # The objects themselves are untouched by compaction.
    assert store.count(RKEY) == 7


def test_compaction_is_repeated_as_the_log_grows():
    store = Store(history=2)
    for i in range(50):
        put(store, f"c{i}", "ADDED")
        retained = store.events_from(store.seq_after(store.compacted_rv))
        assert 1 <= len(retained) <= 4  # never more than 2 x history
        assert retained[-1].rv == store.rv
    kept = store.events_from(store.seq_after(store.compacted_rv))
    assert 2 <= len(kept) <= 4
    assert kept[-1].rv == 50
    assert store.seq_after(store.compacted_rv - 1) is None


def test_compact_all_forgets_every_event():
    store = Store()
    for i in range(4):
        put(store, f"c{i}")
    store.compact_all()
    assert store.compacted_rv == 4
    assert store.seq_after(3) is None
    assert store.seq_after(4) == 4 == store.head_seq()
    assert store.events_from(4) == []
    assert store.events_from(0) is None
    put(store, "c9")
    assert [e.rv for e in store.events_from(store.seq_after(4))] == [5]
    assert store.count(RKEY) == 5


def test_memory_persistence_keeps_nothing():
    mem = MemoryPersistence()
    mem.put(1, RKEY, "default", "a", b"{}")
    rv, rows = mem.load()
    assert rv == 0 and list(rows) == []
    mem.close()


# -- sqlite persistence --------------------------------------------------------------------------------


def test_sqlite_round_trip(tmp_path):
    store = Store(SqlitePersistence(str(tmp_path)))
    put(store, "a", x="1")
    put(store, "b", ns="other", y="2")
    put(store, "a", "MODIFIED", x="3")
    put(store, "gone")
    put(store, "gone", "DELETED")
    store.commit("core/namespaces", "", "ns1",
                 {"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "ns1", "resourceVersion": "6"}}, "ADDED")
    expected = {(rkey, k): s.obj for rkey, k, s in store.all_items()}
    assert store.rv == 6
    store.close()
    assert (tmp_path / "state.sqlite").exists()

    again = Store(SqlitePersistence(str(tmp_path)))
    try:
        assert again.rv == 6
        got = {(rkey, k): s.obj for rkey, k, s in again.all_items()}
        assert got == expected
        assert again.get(RKEY, "default", "gone") is None
        assert again.get(RKEY, "default", "a").obj["data"] == {"x": "3"}
        assert orjson.loads(again.get(RKEY, "other", "b").raw) == again.get(RKEY, "other", "b").obj
        # The event log is not persisted: nothing before the restart can be replayed.
        assert again.compacted_rv == 6
        assert again.seq_after(5) is None
        assert again.seq_after(6) == again.head_seq() == 0
        # New commits continue the counter.
        put(again, "c", z="1")
        assert again.rv == 7
        put(again, "a", "DELETED")
    finally:
        again.close()

    third = Store(SqlitePersistence(str(tmp_path)))
    try:
        assert third.rv == 8
        assert third.get(RKEY, "default", "a") is None
        assert third.get(RKEY, "default", "c").obj["data"] == {"z": "1"}
        assert sorted(k for _, k, _ in third.all_items()) == [
            ("", "ns1"), ("default", "c"), ("other", "b")]
    finally:
        third.close()


def test_sqlite_creates_the_data_dir(tmp_path):
    data = tmp_path / "nested" / "dir"
    store = Store(SqlitePersistence(str(data)))
    try:
        assert store.rv == 0 and list(store.all_items()) == []
        assert (data / "state.sqlite").exists()
    finally:
        store.close()


def test_close_marks_the_store_closed(tmp_path):
    store = Store(SqlitePersistence(str(tmp_path)))
    store.close()
    assert store.closed
