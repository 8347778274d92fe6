"""A small HTTPS upstream on loopback that records every TCP connection it serves.

It is both the offline demo upstream of ``make run`` and the upstream of the tests. Each
connection gets an id; each request on it is counted, and the ``X-Client-Pid`` header, when
a client sends one, records which process wrote that request. ``GET /_upstream/stats``
returns the record (control requests are not counted).

Paths:

- ``/_upstream/stats``: the connection record, as JSON;
- ``/slow?seconds=S``: answers after S seconds;
- ``/status/N``: answers status N with a JSON body;
- ``/text``: a non-JSON body;
- anything else: ``{"path": ..., "query": ..., "connection": id, "request": n}``.

Run: ``python -m app.upstream --certs DIR [--port 0]``: writes ``DIR/ca.pem`` (the CA to
trust) and prints ``https://127.0.0.1:PORT`` on its first line of output.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

STATS_PATH = "/_upstream/stats"


class Record:
    """Connections seen, under one lock: id -> {peer, requests, pids}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._connections: dict[int, dict[str, Any]] = {}

    def new_connection(self, peer: str) -> int:
        with self._lock:
            conn_id = next(self._ids)
            self._connections[conn_id] = {"peer": peer, "requests": 0, "pids": set(),
                                          "open": True}
            return conn_id

    def request(self, conn_id: int, pid: str | None) -> int:
        with self._lock:
            entry = self._connections[conn_id]
            entry["requests"] += 1
            if pid:
                entry["pids"].add(pid)
            return int(entry["requests"])

    def closed(self, conn_id: int) -> None:
        with self._lock:
            self._connections[conn_id]["open"] = False

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            conns = [
                {"id": cid, "peer": e["peer"], "requests": e["requests"],
                 "pids": sorted(e["pids"]), "open": e["open"]}
                for cid, e in self._connections.items()
                if e["requests"] > 0
            ]
        return {
            "connections": conns,
            "requests": sum(c["requests"] for c in conns),
            "open": sum(1 for c in conns if c["open"]),
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: UpstreamServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; with Nagle on, the body would wait for
        # the client's delayed ACK (40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.server.record.new_connection(f"{self.client_address[0]}:"
                                                         f"{self.client_address[1]}")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.record.closed(self.conn_id)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        url = urlsplit(self.path)
        if url.path == STATS_PATH:
            self._answer(200, json.dumps(self.server.record.as_json()).encode())
            return
        n = self.server.record.request(self.conn_id, self.headers.get("X-Client-Pid"))
        query = parse_qs(url.query)
        if url.path == "/slow":
            time.sleep(float(query.get("seconds", ["1"])[0]))
        if url.path.startswith("/status/"):
            status = int(url.path.rsplit("/", 1)[1])
            self._answer(status, json.dumps({"status": status}).encode())
            return
        if url.path == "/text":
            self._answer(200, b"plain text, not JSON\n", "text/plain")
            return
        body = {"path": url.path, "query": url.query, "connection": self.conn_id,
                "request": n, "server_pid": os.getpid()}
        self._answer(200, json.dumps(body).encode())

    do_HEAD = do_GET


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.record = Record()
        # The handshake happens on first read, in the handler's thread: done in accept()
        # it would stall every other client behind a slow or failing one.
        self.socket = context.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that fails TLS or hangs up is not the upstream's error


def make_certs(directory: str, name: str = "127.0.0.1") -> ssl.SSLContext:
    """Generate a CA (written to ``directory/ca.pem``) and a server context it signed."""
    import trustme

    os.makedirs(directory, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    server_cert = ca.issue_cert(name, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", required=True, help="directory for ca.pem")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = UpstreamServer((args.host, args.port), make_certs(args.certs))
    print(f"https://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
