"""Deferred DEL (netplane.cni.teardown) through the handler, without root: a real IpamStore and a
real spool directory in a temp dir, and a datapath whose teardown waits for the test's go.
Assertions are on final state: what is wired, reserved and recorded in the spool."""

from __future__ import annotations

import json
import threading
import time

import pytest

from netplane.cni.handler import CniHandler, KeyLocks, NodeNetwork
from netplane.cni.ipam import IpamStore
from netplane.cni.protocol import parse_spooled_del, shim_request
from netplane.cni.teardown import SpoolJournal
from netplane.metrics import Registry

from tests.unit.test_cni_handler import CONF, FakeDatapath, env

WAIT = 5.0


class GatedDatapath(FakeDatapath):
    """unwire() blocks until `go` is set, as the kernel's veth deletion makes a DEL wait."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.fail_unwire = False

    def unwire(self, req):
        assert self.go.wait(WAIT), "the test never let the teardown go on"
        if self.fail_unwire:
            raise RuntimeError("injected teardown crash")
        super().unwire(req)


def make(tmp_path, cidr="10.244.1.0/24", spool=None):
    dp = GatedDatapath()
    net = NodeNetwork(ipam=IpamStore(str(tmp_path / "ipam"), cidr), mtu=1450, ready_reason=None)
    registry = Registry()
    journal = SpoolJournal(str(spool or tmp_path / "spool"))
    return CniHandler(dp, net, registry, teardown_journal=journal), dp, net, journal, registry


def add(handler, cid="c1"):
    code, out = handler.handle(env("ADD", cid), json.dumps(CONF).encode())
    assert code == 0, out
    return out["ips"][0]["address"].split("/")[0]


def delete(handler, cid="c1"):
    return handler.handle(env("DEL", cid), json.dumps(CONF).encode())


def in_thread(fn, *args):
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("out", fn(*args)), daemon=True)
    t.start()
    return t, box


def test_del_is_answered_once_recorded_and_torn_down_after(tmp_path):
    handler, dp, net, journal, registry = make(tmp_path)
    ip = add(handler)
    assert delete(handler) == (0, None)
    # answered, but nothing is torn down yet: the DEL is on record, the IP still reserved
    with open(journal.path(("c1", "eth0")), "rb") as f:
        req = parse_spooled_del(f.read())
    assert (req.command, req.container_id, req.ifname) == ("DEL", "c1", "eth0")
    assert ("c1", "eth0") in dp.wired and net.ipam.usage()[0] == 1
    assert handler.teardown_pending("c1", "eth0")
    assert "netplane_cni_deferred_deletes 1" in registry.render().decode()
    dp.go.set()
    assert handler.drain_teardowns(WAIT)
    assert not dp.wired and net.ipam.usage()[0] == 0
    assert not (tmp_path / "spool" / "c1-eth0.json").exists()
    text = registry.render().decode()
    assert "netplane_cni_deferred_deletes 0" in text
    assert "netplane_cni_teardown_duration_seconds_count 1" in text
    assert ip not in {a.ip for a in net.ipam.allocations()}


def test_add_of_the_same_key_waits_for_the_teardown(tmp_path):
    handler, dp, net, _, _ = make(tmp_path)
    add(handler)
    delete(handler)
    t, box = in_thread(add, handler, "c1")
    t.join(0.3)
    assert t.is_alive(), "the re-ADD did not wait for the old wiring's teardown"
    dp.go.set()
    t.join(WAIT)
    assert box.get("out") and dp.wired.get(("c1", "eth0")) == box["out"]
    assert net.ipam.usage()[0] == 1


def test_exhausted_pool_waits_for_pending_teardowns(tmp_path):
    handler, dp, net, _, _ = make(tmp_path, cidr="10.244.1.0/30")  # one usable address
    assert net.ipam.usage()[1] == 1
    first = add(handler, "c1")
    delete(handler, "c1")
    t, box = in_thread(add, handler, "c2")
    t.join(0.3)
    assert t.is_alive()
    dp.go.set()
    t.join(WAIT)
    assert box.get("out") == first and set(dp.wired) == {("c2", "eth0")}


def test_gc_waits_for_pending_teardowns(tmp_path):
    handler, dp, net, _, _ = make(tmp_path)
    add(handler, "c1")
    add(handler, "c2")
    delete(handler, "c1")
    gc = {**CONF, "cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}
    t, box = in_thread(handler.handle, {"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, json.dumps(gc).encode())
    t.join(0.3)
    assert t.is_alive()
    dp.go.set()
    t.join(WAIT)
    assert box["out"] == (0, None)
    assert set(dp.wired) == {("c2", "eth0")} and net.ipam.usage()[0] == 1


def test_unwritable_journal_tears_down_before_answering(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    handler, dp, net, _, _ = make(tmp_path, spool=blocker / "spool")
    add(handler)
    dp.go.set()
    assert delete(handler) == (0, None)
    assert not dp.wired and net.ipam.usage()[0] == 0  # done before the answer
    assert not handler.teardown_pending("c1", "eth0")


def test_failed_teardown_keeps_the_record_for_replay(tmp_path):
    handler, dp, net, journal, _ = make(tmp_path)
    add(handler)
    dp.fail_unwire = True
    delete(handler)
    dp.go.set()
    assert handler.drain_teardowns(WAIT)
    assert (tmp_path / "spool" / "c1-eth0.json").exists()  # Agent._replay_pending_deletes retries it
    assert net.ipam.usage()[0] == 1
    # the key is free again: the replay (a plain DEL) goes through
    dp.fail_unwire = False
    with open(journal.path(("c1", "eth0")), "rb") as f:
        req = parse_spooled_del(f.read())
    assert handler.replay_delete(req, time.time() + 60, still_recorded=lambda: True) == "replayed"
    assert not dp.wired and net.ipam.usage()[0] == 0


def test_drain_times_out_while_a_teardown_hangs(tmp_path):
    handler, dp, _, _, _ = make(tmp_path)
    add(handler)
    delete(handler)
    assert not handler.drain_teardowns(0.2)
    dp.go.set()
    assert handler.drain_teardowns(WAIT)


@pytest.mark.parametrize("workers", [1, 4])
def test_many_dels_all_torn_down(tmp_path, workers):
    dp = GatedDatapath()
    dp.go.set()
    net = NodeNetwork(ipam=IpamStore(str(tmp_path / "ipam"), "10.244.1.0/24"), mtu=1450, ready_reason=None)
    handler = CniHandler(dp, net, Registry(), teardown_journal=SpoolJournal(str(tmp_path / "spool")),
                         teardown_workers=workers)
    for i in range(30):
        add(handler, f"c{i}")
    for i in range(30):
        assert delete(handler, f"c{i}") == (0, None)
    assert handler.drain_teardowns(WAIT)
    assert not dp.wired and net.ipam.usage()[0] == 0
    assert not list((tmp_path / "spool").iterdir())
    assert handler.deferred is not None and len(handler.deferred._threads) <= workers
    assert len(handler.key_locks) == 0  # no lock kept per pod that came and went


def test_key_locks_serialize_one_key_and_forget_it_after():
    locks = KeyLocks()
    release = locks.acquire(("c1", "eth0"))
    other = locks.acquire(("c2", "eth0"))  # another key is not held up
    t, box = in_thread(locks.acquire, ("c1", "eth0"))
    t.join(0.2)
    assert t.is_alive() and len(locks) == 2
    release()  # from this thread; the deferred teardown releases from a worker the same way
    t.join(WAIT)
    box["out"]()
    other()
    assert len(locks) == 0


def test_replay_is_decided_under_the_key_lock(tmp_path):
    handler, dp, net, journal, _ = make(tmp_path)
    dp.go.set()
    add(handler, "c1")
    req = parse_spooled_del(json.dumps(shim_request(env("DEL", "c1"), json.dumps(CONF).encode())).encode())
    # recorded before the key was (re-)added: history, the live pod stays
    assert handler.replay_delete(req, recorded_at=0.0, still_recorded=lambda: True) == "stale"
    assert ("c1", "eth0") in dp.wired
    # its record vanished while we waited for the key (its own teardown finished it)
    assert handler.replay_delete(req, recorded_at=time.time() + 60, still_recorded=lambda: False) == "gone"
    assert ("c1", "eth0") in dp.wired
    assert handler.replay_delete(req, recorded_at=time.time() + 60, still_recorded=lambda: True) == "replayed"
    assert not dp.wired and net.ipam.usage()[0] == 0
