"""The few endpoints of the OpenSearch 2 REST API that the opensearch-py SDK tests call,
under the path prefix ``/opensearch`` (the client's URL is
``https://127.0.0.1:PORT/opensearch``, so the other stubs keep ``/``):

- ``GET /``: the cluster info (``client.info()``);
- ``PUT|POST /{index}/_doc/{id}``: stores the document (``client.index()``), 201 ``created``
  or 200 ``updated``;
- ``GET|POST /{index}/_search``: every stored document of the index as a hit
  (``client.search()``, whatever the query);
- anything else: 400 with an OpenSearch error document.

A control prefix may follow ``/opensearch``: ``/gate/NAME`` holds the answer until ``POST
/_upstream/gate/NAME`` opens the gate, so a test can hold several requests in flight at once.
"""

from __future__ import annotations

import json
import threading
from typing import Any

PREFIX = "/opensearch"
GATE_SECONDS = 30.0

_lock = threading.Lock()
_documents: dict[str, dict[str, tuple[int, Any]]] = {}  # index -> id -> (version, source)


def handles(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one OpenSearch request on ``handler`` (an ``app.upstream.Handler``)."""
    parts = [p for p in path[len(PREFIX):].split("/") if p]
    if parts[:1] == ["gate"] and len(parts) >= 2:
        gates.event(parts[1]).wait(GATE_SECONDS)
        parts = parts[2:]
    method = handler.command
    if not parts and method in ("GET", "HEAD"):
        _json(handler, 200, _info())
    elif len(parts) == 3 and parts[1] == "_doc" and method in ("PUT", "POST"):
        _index(handler, parts[0], parts[2], json.loads(body or b"{}"))
    elif len(parts) == 2 and parts[1] == "_search" and method in ("GET", "POST"):
        _json(handler, 200, _search(parts[0]))
    else:
        reason = f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]"
        _json(handler, 400, {"error": {"root_cause": [{"type": "illegal_argument_exception",
                                                       "reason": reason}],
                                       "type": "illegal_argument_exception", "reason": reason},
                             "status": 400})


def _info() -> dict[str, Any]:
    return {
        "name": "stub-node", "cluster_name": "stub", "cluster_uuid": "stub-cluster-uuid",
        "version": {"distribution": "opensearch", "number": "2.19.1", "build_type": "tar",
                    "build_hash": "0" * 40, "build_date": "2025-01-01T00:00:00.000000Z",
                    "build_snapshot": False, "lucene_version": "9.12.1",
                    "minimum_wire_compatibility_version": "7.10.0",
                    "minimum_index_compatibility_version": "7.0.0"},
        "tagline": "The OpenSearch Project: https://opensearch.org/",
    }


def _index(handler: Any, index: str, doc_id: str, source: Any) -> None:
    with _lock:
        docs = _documents.setdefault(index, {})
        version = docs[doc_id][0] + 1 if doc_id in docs else 1
        docs[doc_id] = (version, source)
    _json(handler, 201 if version == 1 else 200, {
        "_index": index, "_id": doc_id, "_version": version,
        "result": "created" if version == 1 else "updated",
        "_shards": {"total": 2, "successful": 1, "failed": 0},
        "_seq_no": version - 1, "_primary_term": 1,
    })


def _search(index: str) -> dict[str, Any]:
    with _lock:
        docs = sorted(_documents.get(index, {}).items())
    hits = [{"_index": index, "_id": doc_id, "_score": 1.0, "_source": source}
            for doc_id, (_, source) in docs]
    return {
        "took": 1, "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": len(hits), "relation": "eq"},
                 "max_score": 1.0 if hits else None, "hits": hits},
    }


def _json(handler: Any, status: int, document: object) -> None:
    body = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=UTF-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
