"""A WSGI app whose Kubernetes and google-auth clients are built at import on
``get_registry()``: under ``--preload`` in gunicorn's master, before the fork, as
module-level clients usually are.

- ``GET /k8s/namespaces``, ``/k8s/pods``: ``CoreV1Api.list_namespace()`` /
  ``list_namespaced_pod("default")`` on an ``ApiClient`` whose ``rest_client.pool_manager``
  is ``pool_manager(...)`` with the Configuration's TLS keywords (cluster CA: ``K8S_CA``);
- ``GET /gcs/urllib3``: google-auth's ``AuthorizedHttp(credentials,
  http=pool_manager())``, ``GET /storage/v1/b/bucket``;
- ``GET /gcs/requests``: the same through ``AuthorizedSession`` (``auth_request=`` on a
  ``.session()``, ``.adapter()`` mounted);
- every call is stamped with the calling process's pid (``X-Client-Pid``); the google
  credentials hold a refresh token, so their first call fetches an access token from the
  upstream's token endpoint, through the pools too;
- ``MASTER_CALLS=k8s,gcs``: one ``/k8s/namespaces`` and/or one ``/gcs/urllib3`` call at
  import (in the master under ``--preload``).
"""

import json
import os
import ssl

import google.auth.transport.requests
import google.oauth2.credentials
import kubernetes.client as k8s
from google.auth.transport.urllib3 import AuthorizedHttp

import poolclient

UPSTREAM = os.environ["UPSTREAM_URL"]
registry = poolclient.get_registry()

cfg = k8s.Configuration()
cfg.host = UPSTREAM
cfg.ssl_ca_cert = os.environ["K8S_CA"]
cfg.api_key = {"BearerToken": "test-token"}
cfg.api_key_prefix = {"BearerToken": "Bearer"}
api = k8s.ApiClient(cfg)
# The keywords kubernetes/client/rest.py builds its own PoolManager with (those set here).
api.rest_client.pool_manager = registry.pool_manager(
    cert_reqs=ssl.CERT_REQUIRED if cfg.verify_ssl else ssl.CERT_NONE,
    ca_certs=cfg.ssl_ca_cert, cert_file=cfg.cert_file, key_file=cfg.key_file)
v1 = k8s.CoreV1Api(api)


def _credentials() -> google.oauth2.credentials.Credentials:
    return google.oauth2.credentials.Credentials(
        token=None, refresh_token="refresh", client_id="id", client_secret="secret",
        token_uri=UPSTREAM + "/oauth2/v4/token")


authed_http = AuthorizedHttp(_credentials(), http=registry.pool_manager())
authed_session = google.auth.transport.requests.AuthorizedSession(
    _credentials(), auth_request=google.auth.transport.requests.Request(registry.session()))
authed_session.mount("https://", registry.adapter())
BUCKET = UPSTREAM + "/storage/v1/b/bucket"


def _pid() -> dict[str, str]:
    return {"X-Client-Pid": str(os.getpid())}


def call(path: str) -> object:
    if path.startswith("/k8s/"):
        api.set_default_header("X-Client-Pid", str(os.getpid()))  # one value per process
        if path == "/k8s/namespaces":
            return [ns.metadata.name for ns in v1.list_namespace().items]
        return [pod.metadata.name for pod in v1.list_namespaced_pod("default").items]
    if path == "/gcs/urllib3":
        r = authed_http.request("GET", BUCKET, headers=_pid())
        status, document = r.status, json.loads(r.data)
    else:
        # The token request too (it sends no headers of ours): one value per process.
        authed_session._auth_request.session.headers.update(_pid())
        response = authed_session.get(BUCKET, headers=_pid())
        status, document = response.status_code, response.json()
    if status != 200:
        raise RuntimeError(f"{path}: {status}")
    return document["name"]


for name in filter(None, os.environ.get("MASTER_CALLS", "").split(",")):
    call({"k8s": "/k8s/namespaces", "gcs": "/gcs/urllib3"}[name])


def app(environ, start_response):
    try:
        status, document = "200 OK", {"result": call(environ["PATH_INFO"])}
    except Exception as exc:  # noqa: BLE001 - every failure is the test's 502
        status, document = "502 Bad Gateway", {"error": f"{type(exc).__name__}: {exc}"}
    body = json.dumps({**document, "pid": os.getpid()}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
