"""The seed question's first approach: a Cloudant client built inside every request.

``/classic`` builds python-cloudant's ``Cloudant`` with ``adapter=environ['http.pool']
.adapter()``; ``/sdk`` builds the IBM Cloudant SDK's ``CloudantV1`` on
``environ['http.pool'].session()``. Both disconnect/close as their docs say, and both must
still reuse the worker's connections.
"""

import json
import os

from cloudant.client import Cloudant
from ibm_cloud_sdk_core.authenticators import NoAuthAuthenticator
from ibmcloudant.cloudant_v1 import CloudantV1

UPSTREAM = os.environ["UPSTREAM_URL"]
PID = {"X-Client-Pid": ""}


def classic(pool) -> object:
    client = Cloudant(None, None, url=UPSTREAM, admin_party=True, connect=True,
                      adapter=pool.adapter())
    try:
        client.r_session.headers["X-Client-Pid"] = str(os.getpid())
        return client.all_dbs()
    finally:
        client.disconnect()


def sdk(pool) -> object:
    service = CloudantV1(authenticator=NoAuthAuthenticator())
    service.set_service_url(UPSTREAM)
    with pool.session() as session:
        session.headers["X-Client-Pid"] = str(os.getpid())
        service.set_http_client(session)
        return service.get_server_information().get_result()


def app(environ, start_response):
    handler = classic if environ["PATH_INFO"] == "/classic" else sdk
    body = json.dumps({"pid": os.getpid(), "result": handler(environ["http.pool"])}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
