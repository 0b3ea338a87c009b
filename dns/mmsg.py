"""Batched UDP receive and send for the server's socket loop: recvmmsg(2) and sendmmsg(2)
through ctypes.

Why: a wire-cache answer costs a few µs of CPU, and with one recvfrom + one sendto per query
much of it is per-call overhead: two Python socket calls (argument parsing, a bytes object and
an address tuple per datagram, the GIL released and taken back twice) and two syscall entries.
Linux moves many datagrams per syscall with recvmmsg/sendmmsg, but Python's socket module has
neither (recvmsg/sendmsg move one datagram each), so they are called from libc through ctypes.
Under load one recvmmsg returns every queued query and one sendmmsg sends all the cached
answers; at low load a batch is a single datagram and costs about what recvfrom + sendto did.
Measured with benchmarks/dns_bench.py (A set, 2 vCPUs shared with dnsperf): the server's CPU
per answered query went from ~4.1 µs (1.7 user + 2.3 system) to ~2.7 (0.7-0.9 user + 1.8-1.9
system, the rest of the kernel's UDP path), and dnsperf's own CPU per query drops too since
answers reach it in bursts.

Memory layout (all allocated once per socket, reused for every batch):
- `buffer`: `slots` fixed-size slots, one datagram each; a fast answer is written in place over
  its query (same ID, then the cached bytes), so answering copies only the cached bytes once;
- the sender addresses (sockaddr storage per slot), which the send headers point at directly:
  a fast answer never turns the address into a Python tuple;
- receive headers (iovec → whole slot) and send headers (iovec → the slot, length set per
  answer). Send header j is copied from slot i's template when earlier slots of the batch were
  not answered here (misses, runts), so the answers go out in one contiguous sendmmsg.

The library is loaded on first use (`available()` / `UdpBatch(...)`), never at import time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import struct
import sys

log = logging.getLogger(__name__)

MSG_WAITFORONE = 0x10000  # recvmmsg: block for the first datagram only (linux/socket.h)
_SOCKADDR_STORAGE = 128
_SIN6_LEN = 28
_SIN_LEN = 16


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_HDR_SIZE = ctypes.sizeof(_MMsgHdr)
_LEN_OFFSET = _MMsgHdr.msg_len.offset
_IOV_SIZE = ctypes.sizeof(_IoVec)

_libc_calls: tuple | None = None  # (recvmmsg, sendmmsg) once loaded
_load_error: str | None = None


def _load() -> tuple | None:
    """recvmmsg and sendmmsg from libc, or None (not Linux, no such symbols). Cached."""
    global _libc_calls, _load_error
    if _libc_calls is not None or _load_error is not None:
        return _libc_calls
    if not sys.platform.startswith("linux"):
        _load_error = f"not Linux ({sys.platform})"
        return None
    try:
        # CDLL (not PyDLL): the GIL is released during the call, which recvmmsg needs since it
        # blocks until a query arrives while the pool and TCP threads must keep running.
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError) as exc:
        _load_error = str(exc)
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    _libc_calls = (recvmmsg, sendmmsg)
    return _libc_calls


def available() -> bool:
    """True when recvmmsg/sendmmsg can be called (loads libc on the first call)."""
    return _load() is not None


def unavailable_reason() -> str:
    _load()
    return _load_error or ""


class UdpBatch:
    """recvmmsg/sendmmsg buffers for one UDP socket (AF_INET or AF_INET6), used by one thread.

    After `recv()` returned the lengths of n datagrams, datagram i (0 <= i < n) is
    `view[offsets[i]:offsets[i] + lengths[i]]` and its sender is `address(i)`. To answer it from
    the batch, write the answer over it at `offsets[i]` (the ID bytes stay), set
    `send_sizes[size_index[i]]` to the answer's length and pass i to `send()`. The server's loop
    writes these views directly: a method call per answer would cost a measurable share of it.
    """

    def __init__(self, sock: socket.socket, slots: int = 64, slot_size: int = 4096) -> None:
        calls = _load()
        if calls is None:
            raise OSError(errno.ENOSYS, f"recvmmsg/sendmmsg unavailable: {_load_error}")
        self._recvmmsg, self._sendmmsg = calls
        self._sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        self.slots, self.slot_size = slots, slot_size
        self.buffer = bytearray(slots * slot_size)
        self.view = memoryview(self.buffer)
        self.offsets = tuple(i * slot_size for i in range(slots))
        self._names = bytearray(slots * _SOCKADDR_STORAGE)
        self._names_view = memoryview(self._names)
        # The sender's address length is fixed by the socket's family (an AF_INET6 socket gets
        # IPv4 senders as mapped addresses), so the send templates can carry it up front.
        namelen = _SIN6_LEN if sock.family == socket.AF_INET6 else _SIN_LEN
        self._recv_iov = (_IoVec * slots).from_buffer(bytearray(slots * _IOV_SIZE))
        self._send_iov_raw = bytearray(slots * _IOV_SIZE)
        self._send_iov = (_IoVec * slots).from_buffer(self._send_iov_raw)
        self._recv_hdrs_raw = bytearray(slots * _HDR_SIZE)
        self._recv_hdrs = (_MMsgHdr * slots).from_buffer(self._recv_hdrs_raw)
        self._send_hdrs_raw = bytearray(slots * _HDR_SIZE)
        self._send_hdrs = (_MMsgHdr * slots).from_buffer(self._send_hdrs_raw)
        buf_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        names_addr = ctypes.addressof(ctypes.c_char.from_buffer(self._names))
        for i in range(slots):
            base = buf_addr + i * slot_size
            name = names_addr + i * _SOCKADDR_STORAGE
            self._recv_iov[i].iov_base, self._recv_iov[i].iov_len = base, slot_size
            self._send_iov[i].iov_base = base
            self._init_header(self._recv_hdrs[i].msg_hdr, name, _SOCKADDR_STORAGE,
                              ctypes.addressof(self._recv_iov[i]))
            self._init_header(self._send_hdrs[i].msg_hdr, name, namelen,
                              ctypes.addressof(self._send_iov[i]))
        # Pristine send headers: header j of a batch is overwritten with slot i's when i != j.
        self._send_templates = bytes(self._send_hdrs_raw)
        self._send_hdrs_view = memoryview(self._send_hdrs_raw)
        self._header_slot = list(range(slots))  # which slot's template send header j holds
        self._displaced = 0  # how many send headers hold another slot's template
        # The answer length of slot i is its send iovec's iov_len: element size_index[i] (2*i+1:
        # an iovec is a pointer and a size_t, of the same width, `_iov_field_format`).
        self.send_sizes = memoryview(self._send_iov_raw).cast("B").cast(_iov_field_format())
        self.size_index = tuple(2 * i + 1 for i in range(slots))
        self._recv_lens = memoryview(self._recv_hdrs_raw).cast("B").cast("I")
        self._len_index = _LEN_OFFSET // 4
        self._len_stride = _HDR_SIZE // 4
        self._recv_ptr = ctypes.addressof(self._recv_hdrs)
        self._send_ptr = ctypes.addressof(self._send_hdrs)

    @staticmethod
    def _init_header(hdr: _MsgHdr, name: int, namelen: int, iov: int) -> None:
        hdr.msg_name, hdr.msg_namelen = name, namelen
        hdr.msg_iov, hdr.msg_iovlen = iov, 1

    def recv(self) -> list[int]:
        """Block until at least one datagram is queued, then take every queued one (up to
        `slots`). Returns their lengths (datagrams longer than `slot_size` are cut, as
        recvfrom(slot_size) would). Raises OSError (EINTR, shutdown, a closed socket)."""
        n = self._recvmmsg(self._fd, self._recv_ptr, self.slots, MSG_WAITFORONE, None)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        start = self._len_index
        return self._recv_lens[start:start + n * self._len_stride:self._len_stride].tolist()

    def address(self, i: int) -> tuple:
        """The sender of datagram i as the socket module spells it: (host, port) for IPv4,
        (host, port, flowinfo, scope_id) for IPv6."""
        off = i * _SOCKADDR_STORAGE
        name = self._names_view[off:off + _SOCKADDR_STORAGE]
        if self._family == socket.AF_INET6:
            port, flowinfo = struct.unpack_from("!HI", name, 2)
            (scope_id,) = struct.unpack_from("=I", name, 24)
            return socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flowinfo, scope_id
        (port,) = struct.unpack_from("!H", name, 2)
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port

    def send(self, answered: list[int]) -> int:
        """Send the answers written in place in slots `answered` (ascending), each
        `send_sizes[size_index[i]]` bytes long, with as few sendmmsg calls as possible. Returns
        how many could not be sent (each failure drops one answer, as a failed sendto would)."""
        count = len(answered)
        if self._displaced or answered[-1] != count - 1:
            self._pack_headers(answered)
        return self._send_packed(count)

    def _pack_headers(self, answered: list[int]) -> None:
        """Make send header j that of slot answered[j] (they differ after a slot that was not
        answered here: a miss, a runt), and remember which headers are displaced."""
        hdrs, templates, header_slot = self._send_hdrs_view, self._send_templates, self._header_slot
        size = _HDR_SIZE
        for j, i in enumerate(answered):
            held = header_slot[j]
            if held != i:
                hdrs[j * size:(j + 1) * size] = templates[i * size:(i + 1) * size]
                header_slot[j] = i
                self._displaced += (held == j) - (i == j)

    def _send_packed(self, count: int) -> int:
        sent = dropped = 0
        while sent < count:
            n = self._sendmmsg(self._fd, self._send_ptr + sent * _HDR_SIZE, count - sent, 0)
            if n > 0:
                sent += n
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            # The first answer left could not be sent (e.g. an unroutable client): drop it
            # and go on with the next ones, as the per-datagram sendto loop does.
            log.debug("dns: sendmmsg: %s; dropping one answer", os.strerror(err))
            sent += 1
            dropped += 1
        return dropped


def _iov_field_format() -> str:
    """The memoryview format of one iovec field (void* / size_t)."""
    if _IOV_SIZE == 16:
        return "Q"
    if _IOV_SIZE == 8:
        return "I"
    raise OSError(errno.ENOSYS, f"unexpected struct iovec size {_IOV_SIZE}")
