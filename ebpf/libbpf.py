"""The few libbpf calls netplane needs, through ctypes: load a compiled BPF object, reach its
programs and maps, update maps, attach programs to tc ingress (tcx links).

Why libbpf and not bcc for these programs: they call the kernel's conntrack kfuncs
(bpf_skb_ct_lookup), and bcc 0.26 (Debian 12) refuses any call to a non-static function
("cannot call non-static helper function"); libbpf resolves kfunc externs against the kernel's
BTF. Objects are compiled by `make setup` (clang, see the Makefile) into ebpf/build/.

libbpf.so.1 is loaded on first use, never at import time. Errors are `BpfError`, naming the
object, program, map or interface.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from netplane.errors import NetplaneError

BPF_TCX_INGRESS = 46  # enum bpf_attach_type
BPF_ANY = 0


class BpfError(NetplaneError):
    """A libbpf call failed; the message names what it was about and the errno text."""


_lib: ctypes.CDLL | None = None


def _libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise BpfError(f"libbpf.so.1 not found (Debian package libbpf1): {e}") from None
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, restype, argtypes in (
        ("bpf_object__open_file", vp, [cp, vp]),
        ("libbpf_get_error", ctypes.c_long, [vp]),
        ("bpf_object__load", i, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_program__fd", i, [vp]),
        ("bpf_object__find_map_fd_by_name", i, [vp, cp]),
        ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
        ("bpf_map_delete_elem", i, [i, vp]),
        ("bpf_map_lookup_elem", i, [i, vp, vp]),
        ("bpf_map_get_next_key", i, [i, vp, vp]),
        ("libbpf_num_possible_cpus", i, []),
        ("bpf_link_create", i, [i, i, i, vp]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    _lib = lib
    return lib


def _check(rc: int, what: str) -> int:
    if rc < 0:  # libbpf 1.x returns -errno
        raise BpfError(f"{what}: {os.strerror(-rc)}")
    return rc


def possible_cpus() -> int:
    return _check(_libbpf().libbpf_num_possible_cpus(), "counting possible CPUs")


class BpfObject:
    """A loaded BPF object file: its programs' and maps' fds live as long as this object."""

    def __init__(self, path: str | Path) -> None:
        lib = _libbpf()
        self.path = str(path)
        if not os.path.exists(self.path):
            raise BpfError(f"BPF object {self.path} does not exist (built by `make setup`)")
        obj = lib.bpf_object__open_file(self.path.encode(), None)
        if not obj or lib.libbpf_get_error(obj):
            raise BpfError(f"opening BPF object {self.path}: {os.strerror(ctypes.get_errno() or errno.EINVAL)}")
        self._obj: int | None = obj
        rc = lib.bpf_object__load(obj)
        if rc < 0:
            self.close()
            # libbpf printed the verifier's or the BTF checker's reason on stderr (the agent log).
            raise BpfError(f"loading BPF object {self.path}: {os.strerror(-rc)} (details above in the log)")

    def program_fd(self, name: str) -> int:
        assert self._obj is not None
        prog = _libbpf().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(f"{self.path} has no program {name}")
        return _check(_libbpf().bpf_program__fd(prog), f"fd of program {name}")

    def map(self, name: str) -> BpfMap:
        assert self._obj is not None
        fd = _libbpf().bpf_object__find_map_fd_by_name(self._obj, name.encode())
        return BpfMap(_check(fd, f"{self.path}: map {name}"), name)

    def close(self) -> None:
        if self._obj is not None:
            _libbpf().bpf_object__close(self._obj)
            self._obj = None


class BpfMap:
    """One map of a loaded object; keys and values are bytes of the C layout."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name

    def update(self, key: bytes, value: bytes) -> None:
        _check(_libbpf().bpf_map_update_elem(self.fd, key, value, BPF_ANY), f"map {self.name}: update")

    def delete(self, key: bytes) -> bool:
        """False when the key was not there."""
        rc = _libbpf().bpf_map_delete_elem(self.fd, key)
        if rc == -errno.ENOENT:
            return False
        _check(rc, f"map {self.name}: delete")
        return True

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        buf = ctypes.create_string_buffer(value_size)
        rc = _libbpf().bpf_map_lookup_elem(self.fd, key, buf)
        if rc == -errno.ENOENT:
            return None
        _check(rc, f"map {self.name}: lookup")
        return buf.raw

    def keys(self, key_size: int) -> list[bytes]:
        out: list[bytes] = []
        prev: bytes | None = None
        nxt = ctypes.create_string_buffer(key_size)
        while True:
            rc = _libbpf().bpf_map_get_next_key(self.fd, prev, nxt)
            if rc == -errno.ENOENT:
                return out
            _check(rc, f"map {self.name}: iterate")
            prev = nxt.raw
            out.append(prev)


def tcx_attach_ingress(ifindex: int, prog_fd: int, what: str) -> int:
    """Attach a tc program to `ifindex`'s ingress through a tcx link (Linux 6.6+); returns the
    link's fd. The program runs as long as the fd is open, so a crashed agent leaves nothing
    attached, and tcx coexists with qdiscs other plugins add (the bandwidth plugin's ingress)."""
    fd = _libbpf().bpf_link_create(prog_fd, ifindex, BPF_TCX_INGRESS, None)
    return _check(fd, f"{what}: attaching to tcx ingress")
