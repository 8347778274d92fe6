"""The few endpoints of the Kubernetes API that the SDK tests call, in the JSON the
official client deserializes (``V1NamespaceList``, ``V1PodList``, ``V1Status``):

- ``GET /api/v1/namespaces``: the namespaces ``default`` and ``kube-system``;
- ``GET /api/v1/namespaces/{ns}/pods``: two pods of that namespace (labels ``app=web``
  and ``app=db``); ``labelSelector=app=web`` (equality terms, comma-separated) filters
  them; ``watch=true`` streams one ``ADDED`` event a pod, one JSON line each, chunked, as
  the API server does;
- a namespace other than those two: 404, a ``Status`` whose reason is ``NotFound``.

Every request needs ``Authorization: Bearer <token>``; none, or the token ``bad``, is a
401 ``Status`` (so a test sees the token the client was configured with arrive).

A path may start with ``/gate/NAME`` before ``/api``: a watch then sends its first event
and waits until ``POST /_upstream/gate/NAME`` opens the gate before the rest.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from app.stubs import answer_json

NAMESPACES = ("default", "kube-system")
GATE_SECONDS = 30.0
_PREFIX = "/api/v1/namespaces"


def handles(path: str) -> bool:
    return _route(path)[1].startswith(_PREFIX)


def _route(path: str) -> tuple[str | None, str]:
    """The gate's name, if the path has the prefix, and the API path after it."""
    parts = path.split("/")
    if parts[1:2] == ["gate"] and len(parts) > 3:
        return parts[2], "/" + "/".join(parts[3:])
    return None, path


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one API request on ``handler`` (an ``app.upstream.Handler``)."""
    gate_name, api = _route(path)
    auth = handler.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or auth in ("Bearer ", "Bearer bad"):
        _json(handler, 401, _status(401, "Unauthorized", "Unauthorized"))
        return
    parts = api[len(_PREFIX):].strip("/").split("/")
    if parts == [""]:
        _json(handler, 200, _namespace_list())
        return
    namespace = parts[0]
    if namespace not in NAMESPACES:
        _json(handler, 404, _status(404, "NotFound", f'namespaces "{namespace}" not found'))
        return
    if parts[1:] != ["pods"]:
        _json(handler, 404, _status(404, "NotFound", "the server could not find the "
                                                     "requested resource"))
        return
    pods = _pods(namespace, query.get("labelSelector", [""])[0])
    if query.get("watch", [""])[0].lower() in ("true", "1"):
        gate = gates.event(gate_name) if gate_name else None
        _watch(handler, pods, gate)
    else:
        _json(handler, 200, {"kind": "PodList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": "100"}, "items": pods})


def _json(handler: Any, status: int, document: object) -> None:
    answer_json(handler, status, document)


def _watch(handler: Any, pods: list[dict[str, Any]], gate: threading.Event | None) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for n, pod in enumerate(pods):
        if n == 1 and gate is not None:
            gate.wait(GATE_SECONDS)
        line = json.dumps({"type": "ADDED", "object": pod}).encode() + b"\n"
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _namespace_list() -> dict[str, Any]:
    items = [{"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": str(n),
                           "creationTimestamp": "2024-01-01T00:00:00Z",
                           "labels": {"kubernetes.io/metadata.name": name}},
              "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
             for n, name in enumerate(NAMESPACES, 1)]
    return {"kind": "NamespaceList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "10"}, "items": items}


def _pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
    pods = []
    for n, app in enumerate(("web", "db"), 1):
        labels = {"app": app}
        if any(labels.get(key) != value for key, value in wanted.items()):
            continue
        pods.append({
            "metadata": {"name": f"{app}-0", "namespace": namespace, "uid": f"uid-{app}",
                         "resourceVersion": str(100 + n), "labels": labels,
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": app, "image": f"example/{app}:1"}],
                     "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": f"10.0.0.{n}",
                       "startTime": "2024-01-01T00:00:01Z"},
        })
    return pods
