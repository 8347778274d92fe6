"""The few endpoints of the Elasticsearch 9 REST API, and of its fork OpenSearch 2, that
the elasticsearch and opensearch-py SDK tests call, under the path prefixes ``/elastic`` and
``/opensearch`` (the clients' URLs are ``https://127.0.0.1:PORT/elastic`` and ``.../opensearch``,
so the other stubs keep ``/``):

- ``GET /``: the cluster info (``info()``), as each product describes itself;
- ``PUT|POST /{index}/_doc/{id}``: stores the document (``index()``), 201 ``created`` or
  200 ``updated``;
- ``GET /{index}/_doc/{id}``: the stored document (``get()``), or 404 ``found: false``;
- ``GET|POST /{index}/_search``: every stored document of the index as a hit (``search()``,
  whatever the query);
- anything else: 400 with the products' error document.

Elasticsearch's answers carry ``X-Elastic-Product: Elasticsearch`` (the 9.x client refuses a
server without it) and, when the client asked for the compatible media type (``Accept:
application/vnd.elasticsearch+json; compatible-with=9``, as the 9.x client does), are of that
type, as Elasticsearch answers. Each product keeps its own documents.

A control prefix may follow the product's: ``/gate/NAME`` holds the answer until ``POST
/_upstream/gate/NAME`` opens the gate, so a test can hold several requests in flight at once.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from app.stubs import answer_json

ELASTIC, OPENSEARCH = "/elastic", "/opensearch"
GATE_SECONDS = 30.0
VERSION = "9.1.0"

_lock = threading.Lock()
# (product, index) -> id -> (version, source)
_documents: dict[tuple[str, str], dict[str, tuple[int, Any]]] = {}


def _product(path: str) -> str | None:
    return next((p for p in (ELASTIC, OPENSEARCH) if path == p or path.startswith(p + "/")),
                None)


def handles(path: str) -> bool:
    return _product(path) is not None


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one request on ``handler`` (an ``app.upstream.Handler``)."""
    product = _product(path) or ELASTIC
    parts = [p for p in path[len(product):].split("/") if p]
    if parts[:1] == ["gate"] and len(parts) >= 2:
        gates.event(parts[1]).wait(GATE_SECONDS)
        parts = parts[2:]
    method = handler.command
    index = (product, parts[0] if parts else "")
    if not parts and method in ("GET", "HEAD"):
        _json(handler, product, 200, _info(product))
    elif len(parts) == 3 and parts[1] == "_doc" and method in ("PUT", "POST"):
        _index(handler, index, parts[2], json.loads(body or b"{}"))
    elif len(parts) == 3 and parts[1] == "_doc" and method == "GET":
        _get(handler, index, parts[2])
    elif len(parts) == 2 and parts[1] == "_search" and method in ("GET", "POST"):
        _json(handler, product, 200, _search(index))
    else:
        reason = f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]"
        cause = {"type": "illegal_argument_exception", "reason": reason}
        _json(handler, product, 400, {"error": {"root_cause": [cause], **cause},
                                      "status": 400})


def _info(product: str) -> dict[str, Any]:
    common = {"build_hash": "0" * 40, "build_snapshot": False}
    if product == OPENSEARCH:
        version = {"distribution": "opensearch", "number": "2.19.1", "build_type": "tar",
                   "build_date": "2025-01-01T00:00:00.000000Z", "lucene_version": "9.12.1",
                   "minimum_wire_compatibility_version": "7.10.0",
                   "minimum_index_compatibility_version": "7.0.0", **common}
        tagline = "The OpenSearch Project: https://opensearch.org/"
    else:
        version = {"number": VERSION, "build_flavor": "default", "build_type": "docker",
                   "build_date": "2025-01-01T00:00:00.000Z", "lucene_version": "10.2.2",
                   "minimum_wire_compatibility_version": "8.19.0",
                   "minimum_index_compatibility_version": "8.0.0", **common}
        tagline = "You Know, for Search"
    return {"name": "stub-node", "cluster_name": "stub", "cluster_uuid": "stub-cluster-uuid",
            "version": version, "tagline": tagline}


def _index(handler: Any, index: tuple[str, str], doc_id: str, source: Any) -> None:
    with _lock:
        docs = _documents.setdefault(index, {})
        version = docs[doc_id][0] + 1 if doc_id in docs else 1
        docs[doc_id] = (version, source)
    _json(handler, index[0], 201 if version == 1 else 200, {
        "_index": index[1], "_id": doc_id, "_version": version,
        "result": "created" if version == 1 else "updated",
        "_shards": {"total": 2, "successful": 1, "failed": 0},
        "_seq_no": version - 1, "_primary_term": 1,
    })


def _get(handler: Any, index: tuple[str, str], doc_id: str) -> None:
    with _lock:
        found = _documents.get(index, {}).get(doc_id)
    if found is None:
        _json(handler, index[0], 404, {"_index": index[1], "_id": doc_id, "found": False})
        return
    version, source = found
    _json(handler, index[0], 200, {"_index": index[1], "_id": doc_id, "_version": version,
                                   "_seq_no": version - 1, "_primary_term": 1,
                                   "found": True, "_source": source})


def _search(index: tuple[str, str]) -> dict[str, Any]:
    with _lock:
        docs = sorted(_documents.get(index, {}).items())
    hits = [{"_index": index[1], "_id": doc_id, "_score": 1.0, "_source": source}
            for doc_id, (_, source) in docs]
    return {
        "took": 1, "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": len(hits), "relation": "eq"},
                 "max_score": 1.0 if hits else None, "hits": hits},
    }


def _json(handler: Any, product: str, status: int, document: object) -> None:
    if product != ELASTIC:
        answer_json(handler, status, document, ctype="application/json; charset=UTF-8")
        return
    compatible = "compatible-with=" in handler.headers.get("Accept", "")
    ctype = (f"application/vnd.elasticsearch+json;compatible-with={VERSION.split('.')[0]}"
             if compatible else "application/json")
    answer_json(handler, status, document, [("X-Elastic-Product", "Elasticsearch")], ctype)
