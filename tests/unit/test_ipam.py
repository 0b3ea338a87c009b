"""IPAM: the usable range of a podCIDR, round-robin, idempotent allocate, release/gc by exact key,
exhaustion that changes nothing, corrupt and stale files, and concurrency across threads and
processes, including a writer killed with SIGKILL at random points."""

from __future__ import annotations

import ipaddress
import json
import logging
import multiprocessing
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from netplane.cni.errors import INVALID_CONFIG, INVALID_ENV, IO_FAILURE, IPAM_FAILURE, CniError
from netplane.cni.ipam import Allocation, IpamStore, Pool

CIDR = "10.244.1.0/24"
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def state_dir(tmp_path: Path):
    # The agent keeps its state on tmpfs (/run); /dev/shm is tmpfs too and keeps fsync cheap.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    with tempfile.TemporaryDirectory(prefix="netplane-ipam-", dir=base) as d:
        yield os.path.join(d, "10.244.1.0_24")


def snapshot(d: str) -> dict[str, tuple[bytes, int]]:
    """Every file with its content and mtime: 'nothing changed' means this is equal."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        out[name] = (Path(p).read_bytes(), os.stat(p).st_mtime_ns)
    return out


def reservation_files(d: str) -> list[str]:
    return [n for n in os.listdir(d) if n not in ("lock", "last_reserved")]


def fill(store: IpamStore, n: int, prefix: str = "c") -> list[Allocation]:
    return [store.allocate(f"{prefix}{i}", "eth0") for i in range(n)]


# -- the usable range -----------------------------------------------------------------------------


def test_slash24_hands_out_2_to_254_then_a_clear_exhaustion_error(state_dir):
    store = IpamStore(state_dir, CIDR)
    ips = [a.ip for a in fill(store, 253)]
    assert ips == [f"10.244.1.{i}" for i in range(2, 255)]  # fresh store: in order from .2
    assert store.usage() == (253, 253)
    with pytest.raises(CniError) as e:
        store.allocate("one-too-many", "eth0")
    assert e.value.code == IPAM_FAILURE
    assert "10.244.1.0/24" in str(e.value) and "253" in str(e.value)


def test_exhaustion_changes_nothing(state_dir):
    store = IpamStore(state_dir, "10.244.1.0/29")  # .2-.6
    fill(store, 5)
    before, allocs = snapshot(state_dir), store.allocations()
    for _ in range(3):
        with pytest.raises(CniError):
            store.allocate("late", "eth0")
    assert snapshot(state_dir) == before
    assert store.allocations() == allocs and store.usage() == (5, 5)


def test_allocation_fields(state_dir):
    a = IpamStore(state_dir, CIDR).allocate("abc", "eth0")
    assert a == Allocation("abc", "eth0", "10.244.1.2", 24, "10.244.1.1")


@pytest.mark.parametrize("cidr,expected", [
    ("10.0.0.0/30", ["10.0.0.2"]),
    ("10.0.0.0/29", [f"10.0.0.{i}" for i in range(2, 7)]),
    ("fd00::/126", ["fd00::2", "fd00::3"]),  # IPv6: no broadcast, the last address is usable
])
def test_small_networks(tmp_path, cidr, expected):
    store = IpamStore(str(tmp_path), cidr)
    assert [a.ip for a in fill(store, len(expected))] == expected
    with pytest.raises(CniError, match="no IP addresses available"):
        store.allocate("x", "eth0")


@pytest.mark.parametrize("cidr", ["10.0.0.0/31", "10.0.0.4/32", "fd00::/127", "fd00::1/128"])
def test_networks_without_a_usable_address(tmp_path, cidr):
    store = IpamStore(str(tmp_path), cidr)  # constructible, so DEL and GC keep working
    assert store.usage() == (0, 0)
    before = snapshot(str(tmp_path))
    with pytest.raises(CniError) as e:
        store.allocate("x", "eth0")
    assert e.value.code == IPAM_FAILURE and "no usable address" in e.value.msg and cidr in str(e.value)
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("cidr", ["10.244.1.5/24", "nonsense", "10.244.1.0/33", ""])
def test_invalid_cidr(tmp_path, cidr):
    with pytest.raises(CniError) as e:
        IpamStore(str(tmp_path), cidr)
    assert e.value.code == INVALID_CONFIG and "podCIDR" in e.value.msg


def test_pool_round_robin_is_pure():
    pool = Pool("10.0.0.0/29")
    ip = ipaddress.ip_address
    assert [str(a) for a in pool.candidates(ip("10.0.0.4"))] == \
        ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert str(next(pool.candidates(ip("10.0.0.6")))) == "10.0.0.2"   # wraps
    assert str(next(pool.candidates(ip("10.9.9.9")))) == "10.0.0.2"   # outside: restart
    assert str(next(pool.candidates(ip("fd00::1")))) == "10.0.0.2"    # other family
    assert pool.pick({ip("10.0.0.5")}, ip("10.0.0.4")) == ip("10.0.0.6")
    assert pool.pick({ip(f"10.0.0.{i}") for i in range(2, 7)}, None) is None


# -- allocate / release / gc ----------------------------------------------------------------------


def test_allocate_is_idempotent_per_key(state_dir):
    store = IpamStore(state_dir, CIDR)
    a = store.allocate("c1", "eth0")
    assert store.allocate("c1", "eth0") == a
    b = store.allocate("c1", "net1")  # another interface of the same container
    assert b.ip != a.ip
    assert IpamStore(state_dir, CIDR).allocate("c1", "eth0") == a  # also across instances
    assert len(reservation_files(state_dir)) == 2


def test_release_by_exact_key(state_dir):
    store = IpamStore(state_dir, CIDR)
    a = store.allocate("c1", "eth0")
    store.allocate("c1", "net1")
    store.allocate("c10", "eth0")
    assert store.release("c1", "eth9") is None
    assert store.release("c", "eth0") is None
    assert store.release("c1", "eth0") == a
    assert store.release("c1", "eth0") is None  # DEL is idempotent
    assert {(x.container_id, x.ifname) for x in store.allocations()} == {("c1", "net1"), ("c10", "eth0")}


def test_round_robin_does_not_reuse_a_just_released_address(state_dir):
    store = IpamStore(state_dir, "10.0.0.0/29")  # .2-.6
    fill(store, 3)  # .2 .3 .4
    store.release("c1", "eth0")  # frees .3
    assert store.allocate("d", "eth0").ip == "10.0.0.5"
    # A new instance continues after the last reserved address (persisted), then wraps.
    store = IpamStore(state_dir, "10.0.0.0/29")
    assert store.allocate("e", "eth0").ip == "10.0.0.6"
    assert store.allocate("f", "eth0").ip == "10.0.0.3"


def test_garbage_last_reserved_restarts_from_the_first_free(state_dir):
    store = IpamStore(state_dir, CIDR)
    fill(store, 2)
    Path(state_dir, "last_reserved").write_text("not an ip\n")
    assert store.allocate("x", "eth0").ip == "10.244.1.4"
    os.unlink(os.path.join(state_dir, "last_reserved"))
    assert store.allocate("y", "eth0").ip == "10.244.1.5"


def test_gc_keeps_exactly_the_valid_set(state_dir):
    store = IpamStore(state_dir, CIDR)
    allocs = fill(store, 10)
    valid = {(f"c{i}", "eth0") for i in (1, 3, 5)} | {("unknown", "eth0"), ("c7", "net1")}
    kept = {("c1", "eth0"), ("c3", "eth0"), ("c5", "eth0")}
    released = store.gc(valid)
    assert sorted(a.ip for a in released) == \
        sorted(a.ip for a in allocs if (a.container_id, "eth0") not in kept)
    assert {(a.container_id, a.ifname) for a in store.allocations()} == kept
    assert store.gc(valid) == []
    assert store.gc(set()) and store.allocations() == [] and reservation_files(state_dir) == []


def test_state_persists_across_instances(state_dir):
    allocs = fill(IpamStore(state_dir, CIDR), 5)
    again = IpamStore(state_dir, CIDR)
    assert again.allocations() == allocs and again.usage() == (5, 253)
    for name in reservation_files(state_dir):
        doc = json.loads(Path(state_dir, name).read_text())
        assert set(doc) == {"container_id", "ifname", "reserved_at"}
        assert os.stat(os.path.join(state_dir, name)).st_mode & 0o777 == 0o600


def test_ipv6_store(tmp_path):
    store = IpamStore(str(tmp_path), "fd00:10:244:1::/120")
    a = store.allocate("c", "eth0")
    assert a == Allocation("c", "eth0", "fd00:10:244:1::2", 120, "fd00:10:244:1::1")
    assert os.path.exists(tmp_path / "fd00:10:244:1::2")
    assert IpamStore(str(tmp_path), "fd00:10:244:1::/120").allocations() == [a]


@pytest.mark.parametrize("cid,ifname,field", [
    ("", "eth0", "CNI_CONTAINERID"), ("-abc", "eth0", "CNI_CONTAINERID"),
    ("a/b", "eth0", "CNI_CONTAINERID"), ("abc\n", "eth0", "CNI_CONTAINERID"),
    ("a b", "eth0", "CNI_CONTAINERID"), ("abc", "", "CNI_IFNAME"), ("abc", "x" * 16, "CNI_IFNAME"),
    ("abc", "et/h0", "CNI_IFNAME"), ("abc", "eth:0", "CNI_IFNAME"), ("abc", "eth 0", "CNI_IFNAME"),
    ("abc", ".", "CNI_IFNAME"), ("abc", "..", "CNI_IFNAME"), ("abc", "eth0\t", "CNI_IFNAME"),
])
def test_key_validation(state_dir, cid, ifname, field):
    store = IpamStore(state_dir, CIDR)
    for op in (store.allocate, store.release):
        with pytest.raises(CniError) as e:
            op(cid, ifname)
        assert e.value.code == INVALID_ENV and field in e.value.msg
    assert not os.path.exists(state_dir)  # rejected before touching anything


def test_valid_keys_accepted(state_dir):
    store = IpamStore(state_dir, CIDR)
    store.allocate("0a_b.c-d", "x" * 15)
    store.allocate("f" * 64, "net1.100")


# -- corrupt, stale and crashed files -------------------------------------------------------------


def test_corrupt_files_are_ignored_reported_once_and_removed_by_gc(state_dir, caplog):
    store = IpamStore(state_dir, CIDR)
    good = store.allocate("good", "eth0")  # .2
    bad = {"10.244.1.3": b"{not json", "10.244.1.4": b"", "10.244.1.5": b'{"container_id": "x"}',
           "10.244.1.6": b'{"container_id": "../x", "ifname": "eth0"}', "10.244.1.7": b"[1, 2]",
           "10.244.1.8": b'"\xff\xfe"'}
    for name, data in bad.items():
        Path(state_dir, name).write_bytes(data)
    Path(state_dir, "README").write_text("someone else's file")
    Path(state_dir, "10.244.1.010").write_text("{}")  # not a canonical address name
    with caplog.at_level(logging.WARNING, logger="netplane.cni.ipam"):
        assert store.allocations() == [good]
        assert store.allocations() == [good]
        # An unreadable file still blocks its address: never hand out an IP that has a file.
        assert store.allocate("new", "eth0").ip == "10.244.1.9"
    warned = [r.getMessage() for r in caplog.records]
    for name in [*bad, "README", "10.244.1.010"]:
        assert sum(f": {name}: " in m for m in warned) == 1, name
    assert store.usage() == (2 + len(bad), 253)
    released = store.gc({("good", "eth0"), ("new", "eth0")})
    assert released == []  # unreadable files have no key to report
    assert sorted(reservation_files(state_dir)) == ["10.244.1.010", "10.244.1.2", "10.244.1.9", "README"]
    assert store.usage() == (2, 253)


def test_hostile_json_does_not_crash(state_dir):
    store = IpamStore(state_dir, CIDR)
    Path(state_dir).mkdir(parents=True)
    Path(state_dir, "10.244.1.2").write_text("[" * 60000)  # RecursionError in json
    assert store.allocations() == [] and store.allocate("a", "eth0").ip == "10.244.1.3"


def test_io_failure_is_a_cni_error(tmp_path):
    store = IpamStore(str(tmp_path / "f" / "ipam"), CIDR)
    (tmp_path / "f").write_text("a file where the state directory should be")
    with pytest.raises(CniError) as e:
        store.allocate("a", "eth0")
    assert e.value.code == IO_FAILURE and str(tmp_path / "f" / "ipam") in str(e.value)


def test_podcidr_change_drops_old_reservations(state_dir):
    old = IpamStore(state_dir, "10.244.1.0/24")
    fill(old, 4)  # c0..c3 = .2 .3 .4 .5
    new = IpamStore(state_dir, "10.244.2.0/24")
    assert new.allocations() == [] and new.usage() == (0, 253)
    a = new.allocate("c0", "eth0")  # a stale reservation does not count for idempotency
    assert a.ip == "10.244.2.2"
    assert new.release("c1", "eth0").ip == "10.244.1.3"  # DEL still finds the stale file
    # gc drops every stale file but reports released only the keys that are not valid.
    released = new.gc({("c0", "eth0"), ("c2", "eth0")})
    assert [(r.container_id, r.ip) for r in released] == [("c3", "10.244.1.5")]
    assert reservation_files(state_dir) == ["10.244.2.2"] and new.allocations() == [a]


def test_shrunk_podcidr_makes_the_new_broadcast_stale(state_dir):
    IpamStore(state_dir, "10.244.0.0/23").allocate("c", "eth0")
    Path(state_dir, "10.244.0.255").write_text(json.dumps({"container_id": "d", "ifname": "eth0"}))
    small = IpamStore(state_dir, "10.244.0.0/24")
    assert [a.ip for a in small.allocations()] == ["10.244.0.2"]
    assert [a.ip for a in small.gc({("c", "eth0")})] == ["10.244.0.255"]


def test_duplicate_reservation_of_one_key(state_dir):
    store = IpamStore(state_dir, CIDR)
    a = store.allocate("a", "eth0")
    Path(state_dir, "10.244.1.9").write_text(json.dumps({"container_id": "a", "ifname": "eth0"}))
    assert store.allocations() == [a] and store.allocate("a", "eth0") == a
    assert store.gc({("a", "eth0")}) == []  # the key is alive: not reported released
    assert reservation_files(state_dir) == [a.ip]


def test_crash_leftovers(state_dir):
    store = IpamStore(state_dir, CIDR)
    a = store.allocate("a", "eth0")
    doc = json.dumps({"container_id": "b", "ifname": "eth0", "reserved_at": "x"})
    # Killed after writing the temp file, before link: not a reservation, the IP stays free.
    Path(state_dir, ".tmp.dead1").write_text(doc)
    Path(state_dir, ".tmp.dead2").write_text(doc[:10])  # ... or in the middle of the write
    # Killed after link, before removing the temp name: the reservation is complete.
    os.link(os.path.join(state_dir, a.ip), os.path.join(state_dir, ".tmp.dead3"))
    fresh = IpamStore(state_dir, CIDR)
    assert fresh.allocations() == [a]
    assert fresh.allocate("b", "eth0").ip == "10.244.1.3"
    assert fresh.gc({("a", "eth0"), ("b", "eth0")}) == []
    assert sorted(reservation_files(state_dir)) == ["10.244.1.2", "10.244.1.3"]


# -- concurrency ----------------------------------------------------------------------------------


def _allocate_in_child(state_dir: str, cidr: str, key: str, go, results) -> None:
    store = IpamStore(state_dir, cidr)
    go.wait()
    results.put((key, store.allocate(key, "eth0").ip))


def test_100_concurrent_allocations_from_separate_processes(state_dir):
    go, results = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_allocate_in_child, args=(state_dir, CIDR, f"p{i}", go, results))
             for i in range(100)]
    for p in procs:
        p.start()
    go.set()
    got = dict(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert len(got) == 100 and len(set(got.values())) == 100
    allocs = IpamStore(state_dir, CIDR).allocations()
    assert {a.container_id: a.ip for a in allocs} == got
    assert len(reservation_files(state_dir)) == 100


def test_allocate_release_storm_with_threads(state_dir):
    shared = IpamStore(state_dir, "10.0.0.0/26")  # 61 addresses for 80 keys: some exhaustion too
    owners: dict[str, str] = {}  # ip -> key, for addresses the test knows are reserved
    mine: list[dict[str, str]] = [{} for _ in range(8)]
    guard, failures = threading.Lock(), []

    def worker(n: int) -> None:
        # Half the threads share an instance (threading.Lock), half open their own (flock).
        store = shared if n % 2 else IpamStore(state_dir, "10.0.0.0/26")
        rng = random.Random(n)
        try:
            for _ in range(100):
                key = f"t{n}-{rng.randrange(10)}"
                if key in mine[n] and rng.random() < 0.5:
                    with guard:
                        del owners[mine[n].pop(key)]  # forget before the address can be reused
                    assert store.release(key, "eth0").ip
                    continue
                try:
                    ip = store.allocate(key, "eth0").ip
                except CniError as e:
                    assert e.code == IPAM_FAILURE and key not in mine[n]
                    continue
                with guard:
                    assert owners.setdefault(ip, key) == key, f"{ip} handed to {key} and {owners[ip]}"
                    assert mine[n].setdefault(key, ip) == ip
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, failures
    expected = {k: ip for m in mine for k, ip in m.items()}
    got = {a.container_id: a.ip for a in shared.allocations()}
    assert got == expected and len(set(got.values())) == len(got)
    assert len(reservation_files(state_dir)) == len(got) and shared.usage()[0] == len(got)


def _churn(state_dir: str, cidr: str, prefix: str, w: int) -> None:
    """Allocate and release forever, announcing each step on the pipe (one atomic write each):
    '+ key' before allocate, '= key ip' once it returned (the ADD was acknowledged),
    '- key' before release, '_ key' once it returned."""
    store, live, i = IpamStore(state_dir, cidr), [], 0
    while True:
        key = f"{prefix}-{i}"
        os.write(w, f"+ {key}\n".encode())
        os.write(w, f"= {key} {store.allocate(key, 'eth0').ip}\n".encode())
        live.append(key)
        if len(live) > 4:
            old = live.pop(0)
            os.write(w, f"- {old}\n".encode())
            store.release(old, "eth0")
            os.write(w, f"_ {old}\n".encode())
        i += 1


def _read_all(r: int) -> list[list[str]]:
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    return [line.split() for line in b"".join(chunks).decode().splitlines()]


def test_kill_9_in_the_middle(state_dir):
    cidr, rng = "10.0.0.0/24", random.Random(42)
    expected: dict[str, str] = {}  # every acknowledged, not released key -> its address
    for round_ in range(20):
        r, w = os.pipe()
        child = FORK.Process(target=_churn, args=(state_dir, cidr, f"r{round_}", w))
        child.start()
        os.close(w)
        time.sleep(rng.uniform(0.0, 0.04))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        acked, adding, removing = {}, None, None
        for op, key, *ip in _read_all(r):
            if op == "+":
                adding = key
            elif op == "=":
                acked[key], adding = ip[0], None
            elif op == "-":
                removing = key
                del acked[key]  # a DEL was issued: the runtime no longer counts the key valid
            else:
                removing = None
        os.close(r)
        expected.update(acked)
        # Acknowledged = allocate returned to the caller. An ADD in flight was never acknowledged:
        # the runtime retries it (and the key may still be valid) or DELs it; alternate both.
        valid = {(k, "eth0") for k in expected}
        if adding and round_ % 2:
            valid.add((adding, "eth0"))

        # Even before gc, every file under an address name is a complete reservation.
        for name in reservation_files(state_dir):
            if not name.startswith(".tmp."):
                assert set(json.loads(Path(state_dir, name).read_text())) >= {"container_id", "ifname"}
        fresh = IpamStore(state_dir, cidr)
        fresh.gc(valid)
        names = reservation_files(state_dir)
        assert not [n for n in names if n.startswith(".tmp.")]
        docs = [json.loads(Path(state_dir, n).read_text()) for n in names]
        got = {a.container_id: a.ip for a in fresh.allocations()}
        assert len(got) == len(docs) == fresh.usage()[0]  # one file per key, none unreadable
        assert len(set(got.values())) == len(got)  # no duplicate address
        assert {k: got[k] for k in expected} == expected  # nothing acknowledged was lost
        assert set(got) <= {k for k, _ in valid} and removing not in got  # nothing leaked

        for key, ip in acked.items():  # retried ADDs return the same address
            assert fresh.allocate(key, "eth0").ip == ip
        if adding:
            ip = fresh.allocate(adding, "eth0").ip
            assert ip == got.get(adding, ip) and ip not in expected.values()
            expected[adding] = ip
        assert {a.container_id: a.ip for a in fresh.allocations()} == expected
    final = IpamStore(state_dir, cidr)
    assert all(final.allocate(key, "eth0").ip == ip for key, ip in expected.items())
