"""What each CNI verb does in the agent: IPAM + pod wiring + the result, with rollback.

The handler turns one forwarded request (env + stdin, as the shim sends it) into the shim's reply
(exit code + stdout JSON). The kernel work sits behind the `Datapath` port (real: wiring.py;
tests: a fake), so verb semantics are tested without root. With a `DeleteJournal`, a DEL is
answered once recorded and its teardown runs on a worker (netplane.cni.teardown says why and
what stays true).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from netplane.cni import errors as codes
from netplane.cni.errors import CniError
from netplane.cni.ipam import Allocation, IpamStore
from netplane.cni.protocol import (
    CniRequest, build_add_result, error_reply, parse_request, shim_request, version_reply,
)
from netplane.cni.teardown import DeferredTeardown, DeleteJournal
from netplane.cni.wiring import WiredPod
from netplane.metrics import Counter, Histogram, Registry

log = logging.getLogger(__name__)


def lenient_del_request(env: Mapping[str, str]) -> CniRequest:
    """The DEL a runtime asked for, from the env alone (container ID and ifname still validated)."""
    from netplane.cni.ipam import validate_key

    cid, ifname = str(env.get("CNI_CONTAINERID") or ""), str(env.get("CNI_IFNAME") or "")
    validate_key(cid, ifname)
    return CniRequest(command="DEL", container_id=cid, netns=str(env.get("CNI_NETNS") or ""), ifname=ifname,
                      args={}, path=str(env.get("CNI_PATH") or ""), config={}, cni_version="1.1.0",
                      prev_result=None, valid_attachments=())


class Datapath(Protocol):
    def wire(self, req: CniRequest, alloc: Allocation, mtu: int) -> WiredPod: ...
    def unwire(self, req: CniRequest) -> None: ...
    def check(self, req: CniRequest, alloc: Allocation) -> None: ...


class KeyLocks:
    """One lock per (container ID, ifname), kept only while someone holds or waits for it: every
    pod brings a new key, so a plain dict of locks would grow for the agent's whole life."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[tuple[str, str], list] = {}  # key -> [lock, holders + waiters]

    def acquire(self, key: tuple[str, str]) -> Callable[[], None]:
        """Block until `key` is ours; returns its release (callable from any thread, once)."""
        with self._mutex:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        entry[0].acquire()

        def release() -> None:
            entry[0].release()
            with self._mutex:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]
        return release

    @contextmanager
    def held(self, key: tuple[str, str]) -> Iterator[None]:
        release = self.acquire(key)
        try:
            yield
        finally:
            release()

    def __len__(self) -> int:
        with self._mutex:
            return len(self._locks)


@dataclass
class NodeNetwork:
    """What the handler needs to know about the node; None fields mean "not ready yet"."""

    ipam: IpamStore | None = None
    mtu: int = 1450
    ready_reason: str | None = "the agent is starting"  # None when ADD can be served


# How long an ADD that found the pool exhausted, or a GC, waits for pending teardowns.
TEARDOWN_WAIT_SECONDS = 10.0


class CniHandler:
    def __init__(self, datapath: Datapath, network: NodeNetwork, registry: Registry,
                 on_pod_change: Callable[[], None] | None = None, *,
                 teardown_journal: DeleteJournal | None = None, teardown_workers: int = 16):
        self.datapath = datapath
        self.network = network
        self.key_locks = KeyLocks()
        self._on_pod_change = on_pod_change or (lambda: None)
        self.requests = Counter(registry, "netplane_cni_requests_total",
                                "CNI requests handled by the agent, by verb and result", ("verb", "result"))
        self.latency = Histogram(registry, "netplane_cni_request_duration_seconds",
                                 "Time to handle a CNI request, by verb", ("verb",))
        # None: a DEL tears down before it is answered.
        self.deferred = (DeferredTeardown(self._del, teardown_journal, teardown_workers, registry)
                         if teardown_journal is not None and teardown_workers > 0 else None)

    # -- entry point ----------------------------------------------------------------------------

    def handle(self, env: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
        """(exit code, stdout JSON or None) for one plugin invocation."""
        start = time.perf_counter()
        verb = str(env.get("CNI_COMMAND") or "?")
        version = "1.1.0"
        try:
            if verb == "VERSION":
                return 0, version_reply()
            try:
                req = parse_request(env, stdin)
            except CniError:
                if verb != "DEL":
                    raise
                # DEL must not block pod teardown: with a config we cannot read, still release
                # what the key (container ID, ifname) holds.
                req = lenient_del_request(env)
            version = req.cni_version
            verb = req.command
            out = self._dispatch(req, env, stdin)
            self.requests.inc(verb, "success")
            return 0, out
        except CniError as e:
            self.requests.inc(verb, f"error{e.code}")
            log.warning("CNI %s %s/%s failed: %s", verb, env.get("CNI_CONTAINERID", "-"),
                        env.get("CNI_IFNAME", "-"), e)
            return 1, error_reply(e, version)
        except Exception as e:  # a bug must still give the runtime a well-formed error
            self.requests.inc(verb, "error999")
            log.exception("CNI %s crashed", verb)
            return 1, error_reply(CniError(999, f"internal error in netplane agent: {e}", ""), version)
        finally:
            self.latency.observe(time.perf_counter() - start, verb)

    def replay_delete(self, req: CniRequest, recorded_at: float, still_recorded: Callable[[], bool]) -> str:
        """A DEL from the spool, decided and done under the key's lock: "gone" when the record
        vanished meanwhile (its own deferred teardown finished it), "stale" when the key was
        ADDed again after the DEL was recorded (replaying it would tear down the live pod),
        else "replayed"."""
        with self.key_locks.held((req.container_id, req.ifname)):
            if not still_recorded():
                return "gone"
            ipam = self.network.ipam
            since = ipam.reserved_since(req.container_id, req.ifname) if ipam else None
            if since is not None and since > recorded_at:
                return "stale"
            self._del(req)
        self.requests.inc("DEL", "replayed")
        return "replayed"

    def drain_teardowns(self, timeout: float) -> bool:
        """Wait for the deferred DELs' teardowns; False when some are still running after `timeout`."""
        return self.deferred is None or self.deferred.drain(timeout)

    def teardown_pending(self, container_id: str, ifname: str) -> bool:
        return self.deferred is not None and self.deferred.is_pending((container_id, ifname))

    def _dispatch(self, req: CniRequest, env: Mapping[str, str], stdin: bytes) -> dict[str, Any] | None:
        if req.command == "STATUS":
            return self._status()
        if req.command == "GC":
            return self._gc(req)
        key = (req.container_id, req.ifname)
        if req.command == "DEL" and self.deferred is not None:
            release = self.key_locks.acquire(key)
            # The worker releases the key when the teardown is done (a later ADD of this key waits).
            try:
                handed_over = self.deferred.submit(req, shim_request({**env, "CNI_COMMAND": "DEL"}, stdin), release)
            except BaseException:
                release()
                raise
            if handed_over:
                return None
            try:
                self._del(req)
            finally:
                release()
            return None
        with self.key_locks.held(key):
            if req.command == "ADD":
                return self._add(req)
            if req.command == "DEL":
                self._del(req)
                return None
            if req.command == "CHECK":
                self._check(req)
                return None
        raise CniError(codes.INVALID_ENV, f"unknown CNI_COMMAND: {req.command}", "")

    def _ipam(self) -> IpamStore:
        if self.network.ipam is None or self.network.ready_reason:
            raise CniError(codes.TRY_AGAIN_LATER, f"netplane agent not ready: {self.network.ready_reason}", "")
        return self.network.ipam

    # -- verbs ----------------------------------------------------------------------------------

    def _add(self, req: CniRequest) -> dict[str, Any]:
        ipam = self._ipam()
        mtu = int(req.config.get("mtu") or self.network.mtu)
        try:
            alloc, reserved = ipam.reserve(req.container_id, req.ifname)
        except CniError as e:
            # Addresses of answered DELs come back when their teardowns end: wait for those once.
            if e.code != codes.IPAM_FAILURE or self.deferred is None or not self.deferred.pending():
                raise
            log.info("ADD %s/%s: pool exhausted; waiting for %d pending teardowns", req.container_id,
                     req.ifname, self.deferred.pending())
            self.deferred.drain(TEARDOWN_WAIT_SECONDS)
            alloc, reserved = ipam.reserve(req.container_id, req.ifname)
        try:
            wired = self.datapath.wire(req, alloc, mtu)
        except BaseException:
            # Nothing partially left behind: the wiring rolled itself back; give the IP back too,
            # but only if this ADD reserved it. A repeated ADD for a key that is already wired
            # fails in the wiring ("already exists") and must not free the live pod's address.
            if reserved:
                ipam.release(req.container_id, req.ifname)
            raise
        self._on_pod_change()
        return build_add_result(
            req.cni_version, host_ifname=wired.host_ifname, host_mac=wired.host_mac,
            pod_ifname=req.ifname, pod_mac=wired.pod_mac, netns=req.netns or "", mtu=wired.mtu,
            ip=alloc.ip, prefixlen=alloc.prefixlen, gateway=alloc.gateway,
            routes=[{"dst": "0.0.0.0/0", "gw": alloc.gateway}],
        )

    def _del(self, req: CniRequest) -> None:
        # DEL is best effort and must succeed when things are already gone; the IP is released
        # even when the namespace or the wiring is gone (the classic IPAM leak otherwise).
        try:
            self.datapath.unwire(req)
        except CniError as e:
            log.warning("DEL %s/%s: unwiring: %s (releasing the IP anyway)", req.container_id, req.ifname, e)
        if self.network.ipam is not None:
            self.network.ipam.release(req.container_id, req.ifname)
        self._on_pod_change()

    def _check(self, req: CniRequest) -> None:
        ipam = self._ipam()
        alloc = next((a for a in ipam.allocations()
                      if (a.container_id, a.ifname) == (req.container_id, req.ifname)), None)
        if alloc is None:
            raise CniError(codes.CHECK_FAILURE,
                           f"no IP is reserved for container {req.container_id} interface {req.ifname}", "")
        self.datapath.check(req, alloc)

    def _gc(self, req: CniRequest) -> None:
        valid = {(a["containerID"], a["ifname"]) for a in req.valid_attachments or ()}
        ipam = self._ipam()
        # A pending teardown releases its own address, after its veth is gone: GC leaves those
        # keys to it (waiting a little for them first, so the usual case reports them released).
        self.drain_teardowns(TEARDOWN_WAIT_SECONDS)
        if self.deferred is not None:
            valid |= self.deferred.pending_keys()
        released = ipam.gc(valid)
        for alloc in released:
            stale = CniRequest(command="DEL", container_id=alloc.container_id, netns="", ifname=alloc.ifname,
                               args={}, path="", config=req.config, cni_version=req.cni_version,
                               prev_result=None, valid_attachments=())
            try:
                self.datapath.unwire(stale)
            except CniError as e:  # GC keeps going past errors (spec)
                log.warning("GC: unwiring %s/%s: %s", alloc.container_id, alloc.ifname, e)
        if released:
            log.info("GC released %d attachments: %s", len(released),
                     ", ".join(f"{a.container_id}/{a.ifname}={a.ip}" for a in released))
            self._on_pod_change()
        return None

    def _status(self) -> None:
        if self.network.ready_reason:
            raise CniError(codes.NOT_AVAILABLE, f"netplane agent cannot add pods: {self.network.ready_reason}", "")
        ipam = self._ipam()
        used, capacity = ipam.usage()
        if used >= capacity:
            raise CniError(codes.NOT_AVAILABLE, f"no free pod IPs: {used} of {capacity} in use", "")
        return None
