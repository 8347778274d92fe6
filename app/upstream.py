"""A small HTTPS upstream on loopback that records every TCP connection it serves.

It is both the offline demo upstream of ``make run`` and the fault-injecting upstream of the
tests. Each connection gets an id; each request on it is counted, and the ``X-Client-Pid``
header, when a client sends one, records which process wrote that request. ``X-Request-Id``,
when sent, is counted per id, so a request a client sent twice shows up as a duplicate.
``GET /_upstream/stats`` returns the record (control requests are not counted). A request
counts once its headers are read, whether it is then answered or dropped.

Paths (any method; a request body is read and discarded):

- ``/_upstream/stats``: the record, as JSON;
- ``/slow?seconds=S``: answers after S seconds;
- ``/status/N``: answers status N with a JSON body;
- ``/text``: a non-JSON body;
- ``/drop-next``: answers 200, then drops the next request on the same connection: it is
  read and counted, and the connection is closed without a byte of answer;
- ``/reset``: promises 1000 bytes of body, sends 10, then resets the connection;
- ``/garbage``: writes a line that is not HTTP, then closes the connection;
- ``/set-cookie?name=N&value=V``: answers with ``Set-Cookie: N=V; Path=/``;
- ``/headers``: ``{"headers": {name: value}}``, the request headers as received;
- ``/redirect?to=URL``: 302 to URL;
- ``/header-lines``: ``{"lines": [[name, value], ...]}``, the request's header lines in
  the order received, repeats kept;
- ``/repeated-headers``: answers ``Set-Cookie: a=1``, ``X-Between: 1``, ``Set-Cookie: b=2``;
- ``/gzip``: a JSON body sent with ``Content-Encoding: gzip``;
- the SDK endpoints of :mod:`app.stubs` (OpenAI and Anthropic, with ``/sse``, in
  :mod:`app.stubs.llm`); ``POST /_upstream/gate/NAME`` opens the gate NAME that a stream
  waits on (not counted);
- anything else: ``{"path", "query", "method", "body_length", "connection", "request",
  "server_pid"}``.

Run: ``python -m app.upstream --certs DIR [--port 0] [--hosts N] [--idle-close S]
[--cert-expired] [--alpn h2,http/1.1]``: writes ``DIR/ca.pem`` (the CA to trust; reused
with ``DIR/ca-key.pem`` when both exist, so a restart keeps clients' trust) and prints
``https://127.0.0.1:PORT`` on its first line of output. ``--hosts N`` also listens on that
port on N-1 further loopback addresses (:func:`loopback_hosts`), all covered by the one
certificate.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import json
import os
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from app import stubs
from app.stubs.llm import Gates

STATS_PATH = "/_upstream/stats"
GARBAGE = b"this is not HTTP at all\r\n\r\n"


def loopback_hosts(n: int, main: str = "127.0.0.1") -> list[str]:
    """``main`` then n-1 addresses 127.0.1.1, 127.0.1.2, ..., 127.0.2.1, ...: n hosts.

    127.0.0.x is left out so that the extra hosts never collide with the main one.
    """
    if not 1 <= n <= 1 + 255 * 254:
        raise ValueError(f"hosts must be between 1 and {1 + 255 * 254}, not {n}")
    return [main] + [f"127.0.{1 + i // 254}.{1 + i % 254}" for i in range(n - 1)]


class Record:
    """Connections and requests seen, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._connections: dict[int, dict[str, Any]] = {}
        self._received: collections.Counter[str] = collections.Counter()
        self._methods: collections.Counter[str] = collections.Counter()
        self._dropped = 0
        self._body_bytes = 0

    def body_bytes(self, n: int) -> None:
        """``n`` more bytes of some request body arrived (counted as they arrive)."""
        with self._lock:
            self._body_bytes += n

    def new_connection(self, peer: str, local: str) -> int:
        with self._lock:
            conn_id = next(self._ids)
            self._connections[conn_id] = {"peer": peer, "local": local, "requests": 0,
                                          "pids": set(), "open": True, "alpn": None}
            return conn_id

    def request(self, conn_id: int, pid: str | None, method: str,
                request_id: str | None, alpn: str | None = None) -> int:
        """Count a request whose headers were read; its number on the connection."""
        with self._lock:
            entry = self._connections[conn_id]
            entry["requests"] += 1
            entry["alpn"] = alpn
            if pid:
                entry["pids"].add(pid)
            self._methods[method] += 1
            if request_id is not None:
                self._received[request_id] += 1
            return int(entry["requests"])

    def dropped(self) -> None:
        with self._lock:
            self._dropped += 1

    def closed(self, conn_id: int) -> None:
        with self._lock:
            self._connections[conn_id]["open"] = False

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            conns = [
                {"id": cid, "peer": e["peer"], "local": e["local"], "requests": e["requests"],
                 "pids": sorted(e["pids"]), "open": e["open"], "alpn": e["alpn"]}
                for cid, e in self._connections.items()
                if e["requests"] > 0
            ]
            received = dict(self._received)
            methods = dict(self._methods)
            dropped = self._dropped
            body_bytes = self._body_bytes
        return {
            "connections": conns,
            "requests": sum(c["requests"] for c in conns),
            "open": sum(1 for c in conns if c["open"]),
            "received": received,
            "duplicates": sorted(rid for rid, n in received.items() if n > 1),
            "dropped": dropped,
            "body_bytes": body_bytes,
            "methods": methods,
            # Like "connections", only those with counted requests: control calls aside.
            "hosts_seen": len({c["local"] for c in conns}),
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: UpstreamServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; with Nagle on, the body would wait for
        # the client's delayed ACK (40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.server.record.new_connection(
            f"{self.client_address[0]}:{self.client_address[1]}",
            self.connection.getsockname()[0])
        self.drop_next = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.record.closed(self.conn_id)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def handle_one_request(self) -> None:
        # The idle timeout covers only the wait for the next request (the TLS handshake
        # included, on a fresh connection): the stdlib closes the connection when it fires.
        self.connection.settimeout(self.server.idle_close)
        super().handle_one_request()

    def _answer(self, status: int, body: bytes, ctype: str = "application/json",
                headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        """Read the request body (counting its bytes as they arrive), so the next request
        on the connection parses."""
        record = self.server.record
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size + 2)[:-2])
                record.body_bytes(len(parts[-1]))
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record.body_bytes(len(body))
        return body

    def _reset(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        # Linger 0 makes close() send a RST instead of a FIN. rfile holds a reference to
        # the socket that would postpone the real close past the stdlib's shutdown (a FIN).
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                   struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()
        self.close_connection = True

    def _handle(self) -> None:
        # Past the request line: a slow body or a /slow answer is not an idle connection.
        self.connection.settimeout(None)
        body = self._read_body()
        url = urlsplit(self.path)
        if url.path == STATS_PATH:
            self._answer(200, json.dumps(self.server.record.as_json()).encode())
            return
        if url.path.startswith("/_upstream/gate/"):
            self.server.gates.event(url.path.rsplit("/", 1)[1]).set()
            self._answer(200, b"{}")
            return
        record = self.server.record
        n = record.request(self.conn_id, self.headers.get("X-Client-Pid"), self.command,
                           self.headers.get("X-Request-Id"),
                           self.connection.selected_alpn_protocol())
        if self.drop_next:
            record.dropped()
            self.close_connection = True  # not a byte: the client meets a closed connection
            return
        query = parse_qs(url.query)
        stub = stubs.find(url.path)
        if stub is not None:
            stub.answer(self, url.path, query, body, self.server.gates)
            return
        if url.path == "/drop-next":
            self.drop_next = True
        elif url.path == "/reset":
            self._reset()
            return
        elif url.path == "/garbage":
            self.wfile.write(GARBAGE)
            self.close_connection = True
            return
        elif url.path == "/slow":
            time.sleep(float(query.get("seconds", ["1"])[0]))
        elif url.path.startswith("/status/"):
            status = int(url.path.rsplit("/", 1)[1])
            self._answer(status, json.dumps({"status": status}).encode())
            return
        elif url.path == "/text":
            self._answer(200, b"plain text, not JSON\n", "text/plain")
            return
        elif url.path == "/headers":
            self._answer(200, json.dumps({"headers": dict(self.headers.items())}).encode())
            return
        elif url.path == "/header-lines":
            self._answer(200, json.dumps({"lines": self.headers.items()}).encode())
            return
        elif url.path == "/repeated-headers":
            self._answer(200, b"{}", headers=[("Set-Cookie", "a=1"), ("X-Between", "1"),
                                              ("Set-Cookie", "b=2")])
            return
        elif url.path == "/gzip":
            self._answer(200, gzip.compress(json.dumps({"gzip": True}).encode()),
                         headers=[("Content-Encoding", "gzip")])
            return
        elif url.path == "/redirect":
            to = query.get("to", ["/"])[0]
            self._answer(302, json.dumps({"location": to}).encode(), headers=[("Location", to)])
            return
        headers = []
        if url.path == "/set-cookie":
            name, value = query.get("name", ["cookie"])[0], query.get("value", [""])[0]
            headers.append(("Set-Cookie", f"{name}={value}; Path=/"))
        body = {"path": url.path, "query": url.query, "method": self.command,
                "body_length": len(body), "connection": self.conn_id, "request": n,
                "server_pid": os.getpid()}
        self._answer(200, json.dumps(body).encode(), headers=headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class UpstreamServer(ThreadingHTTPServer):
    """The upstream on ``address`` and, with ``hosts`` > 1, on the same port of further
    loopback addresses; ``idle_close`` seconds without a new request close a connection."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, *,
                 hosts: int = 1, idle_close: float | None = None) -> None:
        super().__init__(address, Handler)
        self.record = Record()
        self.gates = Gates()
        self.idle_close = idle_close
        self.hosts = loopback_hosts(hosts, address[0])
        port = self.server_address[1]
        extra = [socket.create_server((host, port), backlog=self.request_queue_size)
                 for host in self.hosts[1:]]
        # The handshake happens on first read, in the handler's thread: done in accept()
        # it would stall every other client behind a slow or failing one.
        self.listeners = [context.wrap_socket(s, server_side=True,
                                              do_handshake_on_connect=False)
                          for s in [self.socket, *extra]]
        self.socket = self.listeners[0]
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept on every listener from this one thread; each connection gets its own."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                for listener in self.listeners:
                    # Non-blocking: a client gone between readiness and accept must not
                    # stall the other listeners.
                    listener.setblocking(False)
                    selector.register(listener, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in selector.select(poll_interval):
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    self.service_actions()
        finally:
            self._stop.clear()
            self._stopped.set()

    def _accept(self, listener: socket.socket) -> None:
        try:
            request, client_address = listener.accept()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except (OSError, RuntimeError):  # RuntimeError: no thread could be started
            self.shutdown_request(request)

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        for listener in self.listeners[1:]:
            listener.close()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that fails TLS or hangs up is not the upstream's error


def make_certs(directory: str, name: str = "127.0.0.1", *, hosts: Sequence[str] = (),
               expired: bool = False) -> ssl.SSLContext:
    """A server context whose certificate covers ``name``, ``hosts``, 127.0.0.1 and
    localhost, signed by the CA of ``directory/ca.pem`` and ``ca-key.pem``: reused when both
    exist, else generated and written. ``expired``: the certificate expired yesterday."""
    import datetime

    import trustme

    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.join(directory, "ca.pem")
    key_path = os.path.join(directory, "ca-key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as c, open(key_path, "rb") as k:
            ca = trustme.CA.from_pem(c.read(), k.read())
    else:
        ca = trustme.CA()
        # Key first: ca.pem alone is never taken for a reusable CA.
        ca.private_key_pem.write_to_path(key_path)
        ca.cert_pem.write_to_path(cert_path)
    identities = list(dict.fromkeys([name, *hosts, "127.0.0.1", "localhost"]))
    validity: dict[str, datetime.datetime] = {}
    if expired:
        now = datetime.datetime.now(datetime.timezone.utc)
        validity = {"not_before": now - datetime.timedelta(days=30),
                    "not_after": now - datetime.timedelta(days=1)}
    server_cert = ca.issue_cert(*identities, **validity)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", required=True, help="directory for ca.pem")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=1,
                        help="listen on this many loopback addresses in all")
    parser.add_argument("--idle-close", type=float, default=None, metavar="SECONDS",
                        help="close a connection idle this long (default: never)")
    parser.add_argument("--cert-expired", action="store_true",
                        help="serve a certificate that expired yesterday")
    parser.add_argument("--alpn", default="",
                        help="protocols to choose from when a client offers them (h2,http/1.1);"
                             " the choice is recorded per connection, the answer is HTTP/1.1")
    parser.add_argument("--name", action="append", default=[],
                        help="another name the certificate covers (a compose service name)")
    args = parser.parse_args(argv)
    hosts = loopback_hosts(args.hosts, args.host)
    context = make_certs(args.certs, args.host, hosts=[*hosts, *args.name],
                         expired=args.cert_expired)
    if args.alpn:
        context.set_alpn_protocols(args.alpn.split(","))
    server = UpstreamServer((args.host, args.port), context, hosts=args.hosts,
                            idle_close=args.idle_close)
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
