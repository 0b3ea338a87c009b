"""IPAM for netplane's CNI: hand out pod addresses from the node's podCIDR.

Two layers:
- `Pool` (pure): which addresses of a podCIDR are usable and the round-robin order to try them.
- `IpamStore` (files): one file per reserved address in a tmpfs directory, like host-local, so
  reservations survive an agent restart but not a node reboot (when no pod survives either).

Layout of `state_dir`:
    lock              flock'ed (exclusively) for every operation, reads included
    last_reserved     the last address handed out: round-robin resumes after it (a hint only)
    <ip>              a reservation: JSON {container_id, ifname, reserved_at}
    .tmp.*            a reservation being written; garbage once no one holds the lock

Crash safety: a reservation file only ever appears under its `<ip>` name through `link()` of a
fully written temp file, and link fails if the name exists. So a kill -9 at any point leaves
either no `<ip>` file (only `.tmp.*` garbage, removed by `gc`) or a complete one (written data
outlives the process in the page cache), and the caller learns the address only after the link.
The flock dies with its process. Nothing is fsynced: the state belongs on tmpfs, and pods do not
survive a power loss anyway; if state_dir is on a disk and a power loss leaves an empty or
unreadable file behind, it blocks its address only until the agent's start-up reconcile or a GC
drops it (both release unreadable files). An fsync costs milliseconds per ADD on a disk.

Speed: every operation lists the directory under the lock (so other processes' changes are
always seen), but a reservation file is read only once per inode: files are never rewritten in
place (a new reservation is a new inode, linked in), so (name, inode) identifies the content and
the key read from it is kept in memory. An operation then costs one getdents instead of one
open+read+parse per reserved address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from netplane.cni.errors import INVALID_CONFIG, INVALID_ENV, IO_FAILURE, IPAM_FAILURE, CniError

log = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Key = tuple[str, str]

LOCK_FILE = "lock"
LAST_RESERVED_FILE = "last_reserved"
TMP_PREFIX = ".tmp."

_CONTAINER_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_IFNAMSIZ = 16  # the kernel's limit includes the trailing NUL


@dataclass(frozen=True)
class Allocation:
    container_id: str
    ifname: str
    ip: str
    prefixlen: int
    gateway: str


def validate_key(container_id: str, ifname: str) -> None:
    """Reject keys the runtime could not have sent; CniError(INVALID_ENV) names the field."""
    if not isinstance(container_id, str) or not _CONTAINER_ID_RE.fullmatch(container_id):
        raise CniError(INVALID_ENV, "invalid CNI_CONTAINERID",
                       f"{container_id!r} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")
    if (not isinstance(ifname, str) or not ifname or len(ifname.encode()) >= _IFNAMSIZ
            or ifname in (".", "..") or any(c in "/:" or c.isspace() for c in ifname)):
        raise CniError(INVALID_ENV, "invalid CNI_IFNAME",
                       f"{ifname!r} must be 1-15 bytes without '/', ':' or whitespace, not '.' or '..'")


# -- pure allocator ---------------------------------------------------------------------------------


class Pool:
    """The usable addresses of one podCIDR: everything but the network address, the gateway
    (network + 1) and, for IPv4, the broadcast address. Integers keep IPv4 and IPv6 alike."""

    def __init__(self, cidr: str):
        try:
            self.network = ipaddress.ip_network(cidr, strict=True)
        except (ValueError, TypeError) as e:
            raise CniError(INVALID_CONFIG, "invalid podCIDR", f"{cidr!r}: {e}") from None
        net = int(self.network.network_address)
        top = int(self.network.broadcast_address)
        self.gateway = ipaddress.ip_address(net + 1) if top > net else None
        self.first = net + 2
        # IPv6 has no broadcast: its last address is usable (as in host-local).
        self.last = top - 1 if self.network.version == 4 else top
        self.capacity = max(0, self.last - self.first + 1)

    def __str__(self) -> str:
        return str(self.network)

    def usable(self, ip: IpAddress) -> bool:
        return ip.version == self.network.version and self.first <= int(ip) <= self.last

    def candidates(self, after: IpAddress | None) -> Iterator[IpAddress]:
        """Every usable address once, starting after `after` and wrapping (host-local's
        round-robin), so a just-released address is the last to be reused."""
        if self.capacity == 0:
            return
        start = int(after) + 1 if after is not None and self.usable(after) else self.first
        if start > self.last:
            start = self.first
        for n in range(self.capacity):
            yield ipaddress.ip_address(self.first + (start - self.first + n) % self.capacity)

    def pick(self, taken: set[IpAddress], after: IpAddress | None) -> IpAddress | None:
        return next((ip for ip in self.candidates(after) if ip not in taken), None)

    def allocation(self, key: Key, ip: IpAddress) -> Allocation:
        return Allocation(key[0], key[1], str(ip), self.network.prefixlen, str(self.gateway or ""))


# -- the store --------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """What one locked directory listing found."""

    by_key: dict[Key, tuple[IpAddress, Allocation]] = field(default_factory=dict)
    taken: set[IpAddress] = field(default_factory=set)       # usable addresses with a file
    extra: list[tuple[str, Allocation | None]] = field(default_factory=list)  # to drop in gc
    temps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Entry:
    """One reservation file as read: its inode, address, key (None: unreadable) and, when the
    address is in the pool, the Allocation it stands for."""

    inode: int
    ip: IpAddress
    key: Key | None
    alloc: Allocation | None


class IpamStore:
    """Reservations of one podCIDR in `state_dir`, safe across threads and processes."""

    def __init__(self, state_dir: str, pod_cidr: str):
        self.state_dir = state_dir
        self.pool = Pool(pod_cidr)
        # flock is per open file description: threads sharing this store need their own lock.
        self._mutex = threading.Lock()
        self._reported: set[str] = set()  # the directory is created by the first operation
        # name -> what its current inode holds; see "Speed" in the module docstring
        self._entries: dict[str, _Entry] = {}

    # -- API --

    def allocate(self, container_id: str, ifname: str) -> Allocation:
        """The key's address: the existing one if it has one (a retried ADD), else a new one."""
        return self.reserve(container_id, ifname)[0]

    def reserve(self, container_id: str, ifname: str) -> tuple[Allocation, bool]:
        """`allocate`, and whether this call made the reservation (False: the key had one), so a
        failed ADD gives back only an address it reserved itself, never a live pod's."""
        validate_key(container_id, ifname)
        key = (container_id, ifname)
        with self._locked():
            scan = self._scan()
            if key in scan.by_key:
                return scan.by_key[key][1], False
            ip = self._reserve(key, scan)
            self._write_last_reserved(ip)
            return self.pool.allocation(key, ip), True

    def reserved_since(self, container_id: str, ifname: str) -> float | None:
        """When the key's current reservation was made (its file's mtime), or None."""
        alloc = next((a for a in self.allocations() if (a.container_id, a.ifname) == (container_id, ifname)), None)
        if alloc is None:
            return None
        try:
            return os.stat(os.path.join(self.state_dir, alloc.ip)).st_mtime
        except OSError:
            return None

    def release(self, container_id: str, ifname: str) -> Allocation | None:
        """Drop every file of exactly this key (never match on anything looser: a late DEL must
        not free another pod's address). Unknown keys are fine: DEL is idempotent."""
        validate_key(container_id, ifname)
        key = (container_id, ifname)
        with self._locked():
            scan = self._scan()
            mine = [(n, a) for n, a in scan.extra
                    if a is not None and (a.container_id, a.ifname) == key]
            current = scan.by_key.get(key)
            if current is not None:
                mine.insert(0, (str(current[0]), current[1]))
            for name, _ in mine:
                self._unlink(name)
            return mine[0][1] if mine else None

    def gc(self, valid: set[Key]) -> list[Allocation]:
        """Release every key not in `valid` and return one Allocation per released key (the
        caller tears those attachments down). Also drops, silently for valid keys, stale files
        (outside the current podCIDR), duplicates, unreadable files and crashed writers' temps."""
        gone: dict[Key, Allocation] = {}
        with self._locked():
            scan = self._scan()
            for key, (ip, alloc) in scan.by_key.items():
                if key not in valid:
                    self._unlink(str(ip))
                    gone[key] = alloc
            for name, alloc in scan.extra:
                self._unlink(name)
                key = (alloc.container_id, alloc.ifname) if alloc else None
                if key is not None and key not in valid:
                    gone.setdefault(key, alloc)
            # Safe: we hold the lock, so no writer is between mkstemp and link right now.
            for name in scan.temps:
                self._unlink(name)
        if gone:
            log.info("ipam gc in %s released %d attachment(s)", self.pool, len(gone))
        return list(gone.values())

    def allocations(self) -> list[Allocation]:
        """Valid reservations inside the current podCIDR, in address order."""
        with self._locked():
            scan = self._scan()
        return [a for _, a in sorted(scan.by_key.values(), key=lambda t: int(t[0]))]

    def usage(self) -> tuple[int, int]:
        """(used, capacity). `used` counts every usable address that has a file, unreadable ones
        included, because those block their address until gc: it is what exhaustion depends on."""
        with self._locked():
            scan = self._scan()
        return len(scan.taken), self.pool.capacity

    # -- locking --

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            # A fresh open per operation: a descriptor inherited across fork would share our lock.
            try:
                os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
                lock = os.path.join(self.state_dir, LOCK_FILE)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    yield
                finally:
                    os.close(fd)  # closing the last descriptor of the description releases the flock
            except OSError as e:
                # tmpfs full, permissions, a vanished directory: a CNI error, not a traceback.
                raise CniError(IO_FAILURE, "IPAM state I/O failed", f"{self.state_dir}: {e}") from e

    # -- reading --

    def _scan(self) -> _Scan:
        scan = _Scan()
        with os.scandir(self.state_dir) as it:
            entries = sorted((e.name, e.inode()) for e in it)
        seen: dict[str, _Entry] = {}
        for name, inode in entries:
            if name in (LOCK_FILE, LAST_RESERVED_FILE):
                continue
            if name.startswith(TMP_PREFIX):
                scan.temps.append(name)
                continue
            entry = self._entries.get(name)
            if entry is None or entry.inode != inode:
                ip = _parse_ip_name(name)
                if ip is None:
                    self._report(name, "unexpected file name, ignored")
                    continue
                key = self._read_key(name)
                alloc = self.pool.allocation(key, ip) if key is not None and self.pool.usable(ip) else None
                entry = _Entry(inode, ip, key, alloc)
            seen[name] = entry
            self._scan_reservation(scan, name, entry)
        self._entries = seen
        return scan

    def _scan_reservation(self, scan: _Scan, name: str, entry: _Entry) -> None:
        ip, key = entry.ip, entry.key
        usable = entry.alloc is not None or self.pool.usable(ip)
        if usable:
            scan.taken.add(ip)  # even an unreadable file blocks its address (link would fail)
        if key is None:
            scan.extra.append((name, None))
            return
        if not usable:
            # podCIDR changed: keep it out of the live view; its key may be released, and gc drops it.
            self._report(name, f"outside podCIDR {self.pool}, stale")
            scan.extra.append((name, Allocation(key[0], key[1], name, ip.max_prefixlen, "")))
        elif key in scan.by_key:
            self._report(name, f"second reservation of {key}, dropped by gc")
            scan.extra.append((name, entry.alloc))
        else:
            scan.by_key[key] = (ip, entry.alloc)

    def _read_key(self, name: str) -> Key | None:
        try:
            with open(os.path.join(self.state_dir, name), "rb") as f:
                doc = json.loads(f.read(65536))
            key = (doc["container_id"], doc["ifname"])
            validate_key(*key)
            return key
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, RecursionError, CniError) as e:
            self._report(name, f"unreadable reservation ({type(e).__name__}: {e}), ignored until gc")
            return None

    def _read_last_reserved(self) -> IpAddress | None:
        try:
            with open(os.path.join(self.state_dir, LAST_RESERVED_FILE)) as f:
                return _parse_ip_name(f.read(64).strip())
        except OSError:
            return None  # a missing or unreadable hint only restarts the round-robin

    def _report(self, name: str, why: str) -> None:
        # Once per file and store: the agent scans on every request and must not flood its log.
        if name not in self._reported:
            self._reported.add(name)
            log.warning("ipam %s: %s: %s", self.state_dir, name, why)

    # -- writing --

    def _reserve(self, key: Key, scan: _Scan) -> IpAddress:
        """Publish a reservation for `key`; nothing is left behind when no address is free."""
        if self.pool.pick(scan.taken, None) is None:
            raise self._exhausted()
        doc = {"container_id": key[0], "ifname": key[1],
               "reserved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self._write_temp(json.dumps(doc).encode())
        try:
            for ip in self.pool.candidates(self._read_last_reserved()):
                if ip in scan.taken:
                    continue
                try:
                    os.link(tmp, os.path.join(self.state_dir, str(ip)))  # fails if it exists
                except FileExistsError:
                    continue  # appeared since the scan (should not happen under the lock)
                return ip
            raise self._exhausted()
        finally:
            self._unlink(os.path.basename(tmp))

    def _exhausted(self) -> CniError:
        if self.pool.capacity == 0:
            return CniError(IPAM_FAILURE, "no usable address in podCIDR",
                            f"{self.pool} has no address besides network, gateway and broadcast")
        return CniError(IPAM_FAILURE, "no IP addresses available in podCIDR",
                        f"{self.pool}: all {self.pool.capacity} usable addresses "
                        f"({ipaddress.ip_address(self.pool.first)}-{ipaddress.ip_address(self.pool.last)}) "
                        "are reserved")

    def _write_temp(self, data: bytes) -> str:
        fd, path = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.state_dir)  # O_EXCL, 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
        except BaseException:
            self._unlink(os.path.basename(path))
            raise
        return path

    def _write_last_reserved(self, ip: IpAddress) -> None:
        tmp = self._write_temp(str(ip).encode())  # only a hint
        try:
            os.replace(tmp, os.path.join(self.state_dir, LAST_RESERVED_FILE))
        except OSError as e:
            self._unlink(os.path.basename(tmp))
            log.warning("ipam %s: could not record last_reserved %s: %s", self.state_dir, ip, e)

    def _unlink(self, name: str) -> None:
        self._reported.discard(name)  # a new file under this name deserves its own report
        try:
            os.unlink(os.path.join(self.state_dir, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("ipam %s: could not remove %s: %s", self.state_dir, name, e)


def _parse_ip_name(name: str) -> IpAddress | None:
    """The address a file name stands for, only in its canonical spelling (one file per IP)."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    return ip if str(ip) == name else None
