"""A WSGI app whose Elasticsearch and OpenSearch clients are built at import, with
``node_class=PooledNode`` and ``connection_class=PooledConnection``: under ``--preload`` in
gunicorn's master, before the fork, as a module-level client usually is. Each trusts the
upstream through its own ``ca_certs`` option, as users configure it.

- ``GET /es/info``, ``/es/search``, ``/os/info``, ``/os/search``: one SDK call each, stamped
  with the calling process's pid (``X-Client-Pid``), answering what the SDK parsed;
- ``MASTER_CALL=PATH``: that call once at import (in the master under ``--preload``).

``UPSTREAM_URL`` and ``UPSTREAM_CA`` (the upstream's CA file) are required.
"""

import json
import os

import elasticsearch
import opensearchpy

from poolclient.integrations.elastic import PooledNode
from poolclient.integrations.opensearch import PooledConnection

UPSTREAM = os.environ["UPSTREAM_URL"]
CA = os.environ["UPSTREAM_CA"]

es = elasticsearch.Elasticsearch(UPSTREAM + "/elastic", node_class=PooledNode, ca_certs=CA,
                                 max_retries=0)
search = opensearchpy.OpenSearch(UPSTREAM + "/opensearch", connection_class=PooledConnection,
                                 ca_certs=CA, max_retries=0)


def _pid() -> dict[str, str]:
    return {"X-Client-Pid": str(os.getpid())}


def call(path: str) -> object:
    if path == "/es/info":
        return es.options(headers=_pid()).info()["version"]["number"]
    if path == "/es/search":
        found = es.options(headers=_pid()).search(index="items", query={"match_all": {}})
        return found["hits"]["total"]["value"]
    if path == "/os/info":
        return search.info(headers=_pid())["version"]["distribution"]
    if path == "/os/search":
        found = search.search(index="items", body={"query": {"match_all": {}}}, headers=_pid())
        return found["hits"]["total"]["value"]
    raise LookupError(path)


if os.environ.get("MASTER_CALL"):
    call(os.environ["MASTER_CALL"])


def app(environ, start_response):
    try:
        status, document = "200 OK", {"answer": call(environ["PATH_INFO"])}
    except LookupError:
        status, document = "404 Not Found", {"error": "no such path"}
    except (elasticsearch.ApiError, elasticsearch.TransportError,
            opensearchpy.exceptions.OpenSearchException) as exc:
        status, document = "502 Bad Gateway", {"error": type(exc).__name__}
    body = json.dumps({**document, "pid": os.getpid()}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
