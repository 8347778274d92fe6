"""boto3/botocore's S3 client on the registry's pools (``poolclient.integrations.botocore``),
against moto's real S3 behind TLS: in process, then under real gunicorn ``--preload``.

moto's own servers (``python -m moto.server``, ``ThreadedMotoServer``) are werkzeug's
development server, which answers every request with ``Connection: close``: no connection
is ever reused there. So moto's WSGI app (``DomainDispatcherApplication(create_backend_app)``,
the app ``moto.server`` runs) is served by gevent's ``pywsgi`` (HTTP/1.1 keep-alive,
``Expect: 100-continue``) over TLS, with a certificate made by trustme, in a process of its
own. In front of moto the server records each connection (by peer address) with its request
count and the ``X-Client-Pid`` values it carried.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme
import urllib3

from tests.helpers import ROOT, health_by_worker, load, other_ca_file, refused_url, sockets_to

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
pytest.importorskip("gevent")

from botocore.awsrequest import AWSConnection  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import EndpointConnectionError, SSLError  # noqa: E402

from poolclient import Registry, Settings  # noqa: E402
from poolclient.integrations.botocore import (  # noqa: E402
    BotocoreChangedError,
    RegistrySession,
    use_registry,
)
from poolclient.pool import _CountsConnects  # noqa: E402

SERVER = r"""
import json, sys
from gevent import pywsgi
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

moto = DomainDispatcherApplication(create_backend_app)
seen = {}  # peer "addr:port" -> its record

def app(environ, start_response):
    if environ["PATH_INFO"] == "/_counts":  # not an S3 path: bucket names have no "_"
        body = json.dumps([{"peer": peer, "requests": c["requests"], "pids": sorted(c["pids"])}
                           for peer, c in seen.items()]).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    record = seen.setdefault(environ["REMOTE_ADDR"] + ":" + str(environ["REMOTE_PORT"]),
                             {"requests": 0, "pids": set()})
    record["requests"] += 1
    record["pids"].add(environ.get("HTTP_X_CLIENT_PID", "-"))
    return moto(environ, start_response)

server = pywsgi.WSGIServer(("127.0.0.1", 0), app, certfile=sys.argv[1], keyfile=sys.argv[2],
                           log=None)
server.start()
print(server.server_port, flush=True)
server.serve_forever()
"""


@dataclass
class Moto:
    url: str
    port: int
    ca: str
    proc: subprocess.Popen[str]

    def connections(self) -> list[dict]:
        """Every connection moto was sent requests on: peer, request count, pids."""
        with urllib3.PoolManager(ca_certs=self.ca, retries=False) as http:
            r = http.request("GET", self.url + "/_counts", timeout=5,
                             headers={"Connection": "close"})
        return json.loads(r.data)


@pytest.fixture
def moto(tmp_path) -> Iterator[Moto]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_pem.write_to_path(paths["key"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    log = open(tmp_path / "moto.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-c", SERVER, paths["cert"], paths["key"]],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.isdigit(), f"moto did not start: {line!r}"
    port = int(line)
    try:
        yield Moto(url=f"https://127.0.0.1:{port}", port=port, ca=paths["ca"], proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        log.close()


DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true",
             "AWS_CONFIG_FILE": "/nonexistent/aws-config",
             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    """Dummy credentials, no IMDS, no config files; AWS_CA_BUNDLE stays as the machine set it."""
    for name, value in DUMMY_AWS.items():
        monkeypatch.setenv(name, value)


def s3_client(url: str, **kwargs):
    config = kwargs.pop("config", None) or Config()
    config = config.merge(Config(s3={"addressing_style": "path"},
                                 retries={"mode": "standard", "total_max_attempts": 1}))
    return boto3.session.Session().client("s3", endpoint_url=url, region_name="us-east-1",
                                          config=config, **kwargs)


def test_put_get_list_on_one_connection(moto, caplog):
    """Bucket, plain and file-like uploads, get, list, head: six calls on one connection,
    counted by the registry and seen so by moto; the connections are botocore's own class
    (its ``Expect: 100-continue`` ran) and counted; botocore's own manager made no pool."""
    registry = Registry(Settings(maxsize=4, pool_timeout=2))
    s3 = s3_client(moto.url, verify=moto.ca)
    assert use_registry(s3, registry) is s3
    assert isinstance(s3._endpoint.http_session, RegistrySession)

    s3.create_bucket(Bucket="one-connection")
    s3.put_object(Bucket="one-connection", Key="plain", Body=b"hello")
    with caplog.at_level(logging.DEBUG, logger="botocore.awsrequest"):
        s3.put_object(Bucket="one-connection", Key="file", Body=io.BytesIO(b"f" * 100_000))
    assert "100 Continue response seen, now sending request body." in caplog.text
    assert s3.get_object(Bucket="one-connection", Key="plain")["Body"].read() == b"hello"
    listed = s3.list_objects_v2(Bucket="one-connection")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["file", "plain"]
    assert s3.head_object(Bucket="one-connection", Key="file")["ContentLength"] == 100_000

    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["reused"]) == (1, 6, 5)
    assert totals["in_use"] == totals["errors"] == totals["unread"] == 0
    (pool,) = registry._pools().live_pools()
    assert issubclass(pool.ConnectionCls, AWSConnection)
    assert issubclass(pool.ConnectionCls, _CountsConnects)
    assert (pool.ca_certs, pool.cert_reqs) == (moto.ca, "CERT_REQUIRED")
    assert sockets_to(os.getpid(), moto.port) == 1
    assert [c["requests"] for c in moto.connections()] == [6]
    assert len(s3._endpoint.http_session._manager.pools) == 0
    registry.close()


def test_a_streaming_body_closed_early_is_not_put_back_half_read(moto):
    """1 MiB object, 10 bytes read, body closed: the connection is closed and counted as
    unread, its slot given back (with maxsize=1 the next call gets a connection, a new one);
    the same for a body dropped unread (a get_object() for its metadata); a body read to
    its end keeps its connection."""
    registry = Registry(Settings(maxsize=1, pool_timeout=1))
    s3 = use_registry(s3_client(moto.url, verify=moto.ca), registry)
    s3.create_bucket(Bucket="streams")
    s3.put_object(Bucket="streams", Key="big", Body=b"y" * (1 << 20))

    body = s3.get_object(Bucket="streams", Key="big")["Body"]
    assert body.read(10) == b"y" * 10
    assert registry.stats().totals()["in_use"] == 1
    body.close()
    totals = registry.stats().totals()
    assert (totals["unread"], totals["in_use"], totals["idle"]) == (1, 0, 0)

    s3.get_object(Bucket="streams", Key="big")  # its body never read nor closed: dropped
    totals = registry.stats().totals()
    assert (totals["unread"], totals["in_use"]) == (2, 0)

    whole = s3.get_object(Bucket="streams", Key="big")["Body"].read()
    assert len(whole) == 1 << 20
    s3.head_object(Bucket="streams", Key="big")
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["unread"]) == (3, 6, 2)
    assert (totals["in_use"], totals["idle"], totals["errors"]) == (0, 1, 0)
    assert sorted(c["requests"] for c in moto.connections()) == [1, 2, 3]
    registry.close()


def test_the_clients_close_closes_nothing_shared(moto):
    """Two clients on one registry: closing one leaves the shared connection open, the
    other goes on using it, and the closed one still works, on the same connection."""
    registry = Registry(Settings(maxsize=4, pool_timeout=2))
    first = use_registry(s3_client(moto.url, verify=moto.ca), registry)
    second = use_registry(s3_client(moto.url, verify=moto.ca), registry)
    first.create_bucket(Bucket="shared")
    first.close()
    assert registry.stats().totals()["idle"] == 1
    assert sockets_to(os.getpid(), moto.port) == 1
    second.head_bucket(Bucket="shared")
    first.head_bucket(Bucket="shared")
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["idle"]) == (1, 3, 1)
    assert [c["requests"] for c in moto.connections()] == [3]
    registry.close()
    assert sockets_to(os.getpid(), moto.port) == 0


def test_a_refused_endpoint_is_botocores_endpoint_connection_error():
    registry = Registry(Settings(maxsize=2, pool_timeout=1))
    url = refused_url()
    s3 = use_registry(s3_client(url), registry)
    with pytest.raises(EndpointConnectionError) as raised:
        s3.list_buckets()
    assert url in str(raised.value)
    assert registry.stats().totals()["errors"] == 1


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_is_the_pool_key_and_is_honoured(moto, tmp_path, monkeypatch):
    """verify=<CA> and verify=False: a pool each, whose TLS settings no send rewrites;
    verify=<another CA>, or botocore's default from AWS_CA_BUNDLE: botocore's SSLError;
    verify=True: the registry's default trust (POOLCLIENT_CA_BUNDLE)."""
    other = other_ca_file(str(tmp_path))
    registry = Registry(Settings(maxsize=2, pool_timeout=1))
    by_ca = use_registry(s3_client(moto.url, verify=moto.ca), registry)
    unverified = use_registry(s3_client(moto.url, verify=False), registry)
    by_ca.create_bucket(Bucket="trust")
    unverified.head_bucket(Bucket="trust")
    by_ca.head_bucket(Bucket="trust")
    pools = {(p.cert_reqs, p.ca_certs) for p in registry._pools().live_pools()}
    assert pools == {("CERT_REQUIRED", moto.ca), ("CERT_NONE", None)}

    with pytest.raises(SSLError):
        use_registry(s3_client(moto.url, verify=other), registry).head_bucket(Bucket="trust")
    monkeypatch.setenv("AWS_CA_BUNDLE", other)  # botocore's verify when none is given
    by_default = use_registry(s3_client(moto.url), registry)
    assert by_default._endpoint.http_session.pool_kwargs["ca_certs"] == other
    with pytest.raises(SSLError):
        by_default.head_bucket(Bucket="trust")
    registry.close()

    pinned = Registry(Settings(ca_bundle=moto.ca, maxsize=2, pool_timeout=1))
    use_registry(s3_client(moto.url, verify=True), pinned).head_bucket(Bucket="trust")
    (pool,) = pinned._pools().live_pools()
    assert (pool.cert_reqs, pool.ca_certs) == ("CERT_REQUIRED", moto.ca)  # not certifi's
    assert pinned.stats().totals()["requests"] == 1
    pinned.close()


def test_the_bound_is_the_registrys_not_max_pool_connections(moto):
    """max_pool_connections=50, POOLCLIENT_MAXSIZE 2: 8 threads making 40 calls in all
    open at most 2 connections, and botocore's own manager none."""
    registry = Registry(Settings(maxsize=2, pool_timeout=10))
    s3 = use_registry(s3_client(moto.url, verify=moto.ca,
                                config=Config(max_pool_connections=50)), registry)
    s3.create_bucket(Bucket="bounded")
    failures: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(5):
                s3.head_bucket(Bucket="bounded")
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            failures.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    (snapshot,) = registry.stats().pools
    assert snapshot.maxsize == 2 and snapshot.requests == 41
    assert snapshot.connections_opened <= 2
    assert len(moto.connections()) <= 2
    assert len(s3._endpoint.http_session._manager.pools) == 0
    registry.close()


def test_a_session_it_was_not_written_for_is_refused():
    s3 = s3_client(refused_url())
    s3._endpoint.http_session = object()
    with pytest.raises(BotocoreChangedError):
        use_registry(s3, Registry(Settings(maxsize=1)))


def socket_inodes_to(pid: int, port: int) -> set[str]:
    """The inodes of the TCP sockets ``pid`` holds to remote ``port`` (as ``sockets_to``);
    a socket inherited over fork has the same inode in both processes."""
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            mine.add(link[len("socket:["):-1])
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if (fields[9] in mine and fields[3] != "0A"
                    and int(fields[2].rsplit(":", 1)[1], 16) == port):
                found.add(fields[9])
    return found


PATHS = ("/put", "/get", "/list")


def test_s3_client_built_at_import_under_preload(gunicorn, moto):
    """-w 2 --threads 4 --preload, the client built at import, one call in the master:
    16 clients, 400 calls, all 200; moto saw every connection carry one process's requests,
    the master's one call on a connection of its own; the workers opened at most 8 (each at
    most its 4 threads) and, read from /proc, no socket to moto is held by two processes."""
    workers, threads = 2, 4
    seeder = s3_client(moto.url, verify=moto.ca)  # botocore's own pool, in this process
    seeder.create_bucket(Bucket="preload")
    seeder.put_object(Bucket="preload", Key="seed", Body=b"s" * 2048)
    seeder.close()
    env = {**DUMMY_AWS, "S3_URL": moto.url, "S3_CA": moto.ca, "S3_BUCKET": "preload",
           "MASTER_CALLS": "1"}
    server = gunicorn(["-w", str(workers), "--threads", str(threads), "-k", "gthread",
                       "--preload", "tests.apps.sdk_s3_app:app"], env)
    worker_pids = server.worker_pids()
    master = server.proc.pid

    # A connection per request, so that the kernel hands them to both workers' accepts.
    outcomes = load(server.url, clients=16, seconds=120, paths=PATHS, requests=400,
                    headers={"Connection": "close"})
    assert outcomes == {200: 400}, outcomes

    held = {pid: socket_inodes_to(pid, moto.port) for pid in (master, *worker_pids)}
    assert held[master] == set(), "the master kept a connection to moto"
    assert all(len(held[pid]) <= threads for pid in worker_pids), held
    assert sum(len(inodes) for inodes in held.values()) <= workers * threads
    assert all(held[a].isdisjoint(held[b]) for a in held for b in held if a != b), \
        "a socket to moto is held by two processes"

    conns = [c for c in moto.connections() if c["pids"] != ["-"]]  # the seeder's aside
    assert all(len(c["pids"]) == 1 for c in conns), "a connection carried two processes"
    in_master = [c for c in conns if c["pids"] == [str(master)]]
    assert [c["requests"] for c in in_master] == [1]
    in_workers = [c for c in conns if c not in in_master]
    assert {int(c["pids"][0]) for c in in_workers} <= worker_pids
    assert len(in_workers) <= workers * threads
    assert sum(c["requests"] for c in in_workers) == 400

    totals = [h["totals"] for h in health_by_worker(server, worker_pids).values()]
    assert sum(t["requests"] for t in totals) == 400
    assert sum(t["connections_opened"] for t in totals) == len(in_workers)
    assert all(t["errors"] == t["unread"] == t["streaming"] == 0 for t in totals)
    assert "inherited" not in server.log()
    server.stop()
