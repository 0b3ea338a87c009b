"""Servers and clients for the proxy's packet tests (stdlib only: pods run it as a host process).

    proxy_servers.py serve [--name NAME] [--tcp PORT]... [--udp PORT]... [--sctp PORT]...
        Every TCP/SCTP connection gets one line at once, and the same line again for every line
        it sends (so a connection can be held open and probed); every UDP datagram gets the line
        back. The line is `<name> <peer ip>:<peer port> <local port>`: which endpoint answered,
        the source address it saw (masqueraded or not) and the port it was reached on. NAME
        defaults to $POD_NAME (a fieldRef to metadata.name), then the hostname. Prints READY.

    proxy_servers.py connect --to HOST:PORT [--proto tcp|udp|sctp] [-n 60] [--timeout 1]
        N new connections (UDP: N datagrams, each from a new socket, so each is a new flow).
        Prints one JSON summary: ok, endpoints {name: count}, peers {ip: count}, local_ports,
        refused, timeout, errors {reason: count}, elapsed.

    proxy_servers.py hold --to HOST:PORT --duration S [--interval 0.2] [--timeout 1]
        One TCP connection kept open, probed every interval; JSON: endpoint, probes, failures,
        errors (first ones), closed (the peer closed or reset it).

    proxy_servers.py udp-stream --to HOST:PORT --duration S [--interval 0.2] [--timeout 0.5]
        One UDP socket (one conntrack flow) sending every interval; JSON: sequence of
        [seconds since start, endpoint or null].

    proxy_servers.py http URL [--timeout 2]
        JSON: status, headers, body (text) of a GET; status 0 and error when it failed.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

IPPROTO_SCTP = 132


def _answer(name: str, peer: tuple, local_port: int) -> bytes:
    return f"{name} {peer[0]}:{peer[1]} {local_port}\n".encode()


def _serve_stream_conn(conn: socket.socket, name: str, peer: tuple, local_port: int) -> None:
    line = _answer(name, peer, local_port)
    try:
        conn.sendall(line)
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                _, buf = buf.split(b"\n", 1)
                conn.sendall(line)
    except OSError:
        pass
    finally:
        conn.close()


def serve(args: argparse.Namespace) -> int:
    name = args.name or os.environ.get("POD_NAME") or socket.gethostname()
    sel = selectors.DefaultSelector()
    for port in args.tcp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.bind, port))
        s.listen(256)
        sel.register(s, selectors.EVENT_READ, ("stream", port))
    for port in args.sctp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_SCTP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.bind, port))
        s.listen(256)
        sel.register(s, selectors.EVENT_READ, ("stream", port))
    for port in args.udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((args.bind, port))
        sel.register(s, selectors.EVENT_READ, ("dgram", port))
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            sock = key.fileobj
            if kind == "stream":
                try:
                    conn, peer = sock.accept()
                except OSError:
                    continue
                threading.Thread(target=_serve_stream_conn, args=(conn, name, peer, port), daemon=True).start()
            else:
                try:
                    _, peer = sock.recvfrom(65535)
                    sock.sendto(_answer(name, peer, port), peer)
                except OSError:
                    continue


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _parse_line(line: bytes) -> tuple[str, str, str]:
    """`<name> <ip>:<port> <local port>` → (name, peer ip, local port)."""
    name, peer, local = line.decode().split()
    return name, peer.rpartition(":")[0], local


def _reason(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        data = sock.recv(4096)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "closed before the answer")
        buf += data
    return buf


def _one(proto: str, target: tuple[str, int], timeout: float) -> bytes:
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect(target)  # connected: an ICMP port-unreachable surfaces as refused
            s.send(b"hello\n")
            return s.recv(4096)
    sock_proto = IPPROTO_SCTP if proto == "sctp" else 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, sock_proto) as s:
        s.settimeout(timeout)
        s.connect(target)
        return _read_line(s)


def connect(args: argparse.Namespace) -> int:
    target = _target(args.to)
    endpoints: Counter[str] = Counter()
    peers: Counter[str] = Counter()
    local_ports: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    start = time.monotonic()
    for _ in range(args.n):
        try:
            name, peer, local = _parse_line(_one(args.proto, target, args.timeout))
        except Exception as e:  # every failure is data for the test
            failures[_reason(e)] += 1
            continue
        endpoints[name] += 1
        peers[peer] += 1
        local_ports[local] += 1
    summary = {
        "ok": sum(endpoints.values()), "endpoints": dict(endpoints), "peers": dict(peers),
        "local_ports": dict(local_ports), "refused": failures.pop("refused", 0),
        "timeout": failures.pop("timeout", 0), "errors": dict(failures),
        "elapsed": round(time.monotonic() - start, 3),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


def hold(args: argparse.Namespace) -> int:
    out: dict = {"endpoint": None, "probes": 0, "failures": 0, "errors": [], "closed": False}
    try:
        s = socket.create_connection(_target(args.to), timeout=args.timeout)
        s.settimeout(args.timeout)
        out["endpoint"] = _parse_line(_read_line(s))[0]
    except Exception as e:
        out["errors"].append(f"connect: {_reason(e)}")
        print(json.dumps(out))
        return 0
    print("CONNECTED", out["endpoint"], file=sys.stderr, flush=True)
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        out["probes"] += 1
        try:
            s.sendall(b"ping\n")
            name = _parse_line(_read_line(s))[0]
            if name != out["endpoint"]:
                raise ValueError(f"answer from {name}")
        except Exception as e:
            out["failures"] += 1
            if len(out["errors"]) < 5:
                out["errors"].append(_reason(e))
            if isinstance(e, (ConnectionResetError, BrokenPipeError)):
                out["closed"] = True
                break
        time.sleep(args.interval)
    s.close()
    print(json.dumps(out))
    return 0


def udp_stream(args: argparse.Namespace) -> int:
    target = _target(args.to)
    sequence = []
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(args.timeout)
        s.connect(target)
        while (now := time.monotonic() - start) < args.duration:
            name = None
            try:
                s.send(b"hello\n")
                name = _parse_line(s.recv(4096))[0]
            except Exception:
                pass
            sequence.append([round(now, 3), name])
            time.sleep(args.interval)
    print(json.dumps({"sequence": sequence}))
    return 0


def http(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as resp:
            out = {"status": resp.status, "headers": dict(resp.headers), "body": resp.read().decode()}
    except urllib.error.HTTPError as e:
        out = {"status": e.code, "headers": dict(e.headers), "body": e.read().decode()}
    except Exception as e:
        out = {"status": 0, "error": _reason(getattr(e, "reason", e)), "headers": {}, "body": ""}
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", default="")
    s.add_argument("--bind", default="0.0.0.0")
    for proto in ("tcp", "udp", "sctp"):
        s.add_argument(f"--{proto}", type=int, action="append", default=[])
    c = sub.add_parser("connect")
    c.add_argument("--to", required=True)
    c.add_argument("--proto", choices=["tcp", "udp", "sctp"], default="tcp")
    c.add_argument("-n", type=int, default=60)
    c.add_argument("--timeout", type=float, default=1.0)
    h = sub.add_parser("hold")
    h.add_argument("--to", required=True)
    h.add_argument("--duration", type=float, required=True)
    h.add_argument("--interval", type=float, default=0.2)
    h.add_argument("--timeout", type=float, default=1.0)
    u = sub.add_parser("udp-stream")
    u.add_argument("--to", required=True)
    u.add_argument("--duration", type=float, required=True)
    u.add_argument("--interval", type=float, default=0.2)
    u.add_argument("--timeout", type=float, default=0.5)
    g = sub.add_parser("http")
    g.add_argument("url")
    g.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args(argv)
    return {"serve": serve, "connect": connect, "hold": hold, "udp-stream": udp_stream, "http": http}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
