"""nginx on loopback for the benchmarks: one TLS server per :class:`Server`, certificates
made here with trustme, and an access log that counts handshakes.

Each line of ``access.log`` is ``port protocol reused connection requests uri``: nginx's
``$ssl_session_reused`` (``r`` for a resumed handshake), the connection's serial and the
request's number on it. A connection whose first request is logged made one handshake, so
the log counts handshakes and resumptions at the server, whatever the client believes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme

CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    log_format handshakes '$server_port $ssl_protocol $ssl_session_reused $connection '
                          '$connection_requests $request_uri';
    access_log {dir}/access.log handshakes;
    ssl_session_cache shared:SSL:1m;
    ssl_session_tickets on;
    # Never closed by the server: every handshake it counts is one the client chose.
    keepalive_timeout 300s;
    keepalive_requests 1000000;
{servers}
}}
"""

SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols {protocol};
        ssl_certificate {dir}/{name}.pem;
        ssl_certificate_key {dir}/{name}.key;
{keepalive}        default_type application/json;
        location / {{
            return 200 '{{"ok":true}}\\n';
        }}
        location /close/ {{
            keepalive_timeout 0;
            return 200 '{{"ok":true}}\\n';
        }}
        location /v1/chat/completions {{
            return 200 '{completion}';
        }}
    }}
"""


# What /v1/chat/completions answers: an OpenAI chat completion, for the SDK contenders.
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "pong"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@dataclass
class Server:
    name: str  # e.g. "tls13-ecdsa"
    protocol: str  # nginx's ssl_protocols value
    key_type: trustme.KeyType = trustme.KeyType.ECDSA
    port: int = 0
    # The server's own keep-alive, in place of the http block's never-ending one: nginx's
    # keepalive_requests (requests on one connection, then it closes) and keepalive_timeout.
    keepalive_requests: int | None = None
    keepalive_timeout: str | None = None

    def keepalive(self) -> str:
        lines = [f"        keepalive_requests {self.keepalive_requests};\n"
                 if self.keepalive_requests else "",
                 f"        keepalive_timeout {self.keepalive_timeout};\n"
                 if self.keepalive_timeout else ""]
        return "".join(lines)


@dataclass(frozen=True)
class Line:
    """One request in the access log."""

    port: int
    protocol: str
    resumed: bool
    connection: int
    number: int  # on its connection: 1 is the one that followed the handshake
    uri: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(found):
        raise SystemExit("bench: nginx not found (make bench installs it: apt-get install "
                         "nginx-light)")
    return found


def version() -> str:
    """``nginx/1.22.1``."""
    return subprocess.run([nginx_binary(), "-v"], capture_output=True,
                          text=True).stderr.strip().rsplit(" ", 1)[-1]


def read_log(directory: Path, offset: int = 0) -> list[Line]:
    """The access log's lines from byte ``offset`` on."""
    path = directory / "access.log"
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode()
    lines = []
    for raw in text.splitlines():
        port, protocol, reused, connection, number, uri = raw.split()
        lines.append(Line(int(port), protocol, reused == "r", int(connection), int(number),
                          uri))
    return lines


@contextmanager
def nginx(directory: Path, servers: list[Server]) -> Iterator[Path]:
    """nginx serving ``servers`` from ``directory``; yields the CA file. Stopped (and its
    log complete) on exit."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    blocks = []
    for server in servers:
        cert = ca.issue_cert("127.0.0.1", "localhost", key_type=server.key_type)
        cert.private_key_pem.write_to_path(str(directory / f"{server.name}.key"))
        with (directory / f"{server.name}.pem").open("wb") as f:
            for pem in cert.cert_chain_pems:
                f.write(pem.bytes())
        server.port = free_port()
        blocks.append(SERVER.format(port=server.port, protocol=server.protocol,
                                    dir=directory, name=server.name,
                                    keepalive=server.keepalive(), completion=COMPLETION))
    (directory / "tmp").mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(CONF.format(dir=directory, servers="".join(blocks)))
    proc = subprocess.Popen([nginx_binary(), "-p", str(directory), "-c", str(conf),
                             "-g", "daemon off;"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        for server in servers:
            while not _listening(server.port):
                if proc.poll() is not None:
                    assert proc.stderr is not None
                    raise SystemExit(f"nginx exited: {proc.stderr.read().decode()}")
                if time.monotonic() > deadline:
                    raise SystemExit("nginx did not start listening within 15 s")
                time.sleep(0.02)
        yield directory / "ca.pem"
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: every request logged
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
