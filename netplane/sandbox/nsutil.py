"""Sockets that live in another network namespace, without moving any thread of ours there.

Python threads are OS threads and a namespace is per thread, so a daemon must not `setns` on a
long-lived thread (CNI's pkg/ns README). Instead a short-lived forked child enters the target
namespace, creates and binds the socket, and passes the descriptor back over a unix socketpair
(pyroute2's create_socket idea). The socket stays in the namespace it was created in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket

from netplane.errors import NetplaneError
from netplane.sandbox.names import NETNS_DIR

CLONE_NEWNET = 0x40000000
_libc = None


class NamespaceError(NetplaneError):
    """A network namespace could not be entered or a socket could not be made inside it."""


def setns_net(netns: str) -> None:
    """Move the calling thread into a named (or path) network namespace. Child processes only."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def listening_socket_in(netns: str, host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to host:port and listening, inside network namespace `netns`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # child: enter, bind, hand over, exit without running any Python cleanup
        code = 0
        try:
            parent.close()
            setns_net(netns)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            socket.send_fds(child, [b"ok"], [sock.fileno()])
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            try:
                child.sendall(f"error: {e}".encode()[:1000])
            except OSError:
                pass
            code = 1
        os._exit(code)
    child.close()
    try:
        msg, fds, _, _ = socket.recv_fds(parent, 1024, 1)
    finally:
        parent.close()
        os.waitpid(pid, 0)
    if not fds:
        raise NamespaceError(f"cannot listen on {host}:{port} in netns {netns}: {msg.decode(errors='replace')}")
    return socket.socket(fileno=fds[0])
