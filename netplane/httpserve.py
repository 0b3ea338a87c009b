"""The small HTTP servers netplane's daemons expose (/healthz, /ready, /metrics, health-check
node ports): one server class and one way to send a reply, shared by the agent, the proxy and
the DNS server."""

from __future__ import annotations

import socket
import socketserver
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon threads, IPv4 or IPv6 by the address, and no name lookup.

    HTTPServer.server_bind resolves its own address with socket.getfqdn(): a reverse DNS query
    that blocks start-up for 5-10 s wherever the resolver does not answer (sandbox nodes, and a
    DNS pod whose resolver is the server that is starting).
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def send(handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str,
         headers: Iterable[tuple[str, str]] = ()) -> None:
    """One complete reply with Content-Type and Content-Length."""
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
