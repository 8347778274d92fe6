"""A WSGI app whose boto3 S3 client is built at import and put on the registry's pools with
``poolclient.integrations.botocore.use_registry``: under ``--preload`` in gunicorn's master,
before the fork, as a module-level client usually is.

- ``GET /put``, ``/get``, ``/list``: one S3 call each (put a small object of its own, get
  the object ``seed``, list the bucket), each request stamped with the calling process's
  pid (``X-Client-Pid``, added in botocore's ``before-send`` event); answers JSON;
- ``MASTER_CALLS=N``: N ``head_bucket`` calls at import (in the master under ``--preload``).

Settings: ``S3_URL`` (moto behind TLS), ``S3_CA`` (its CA, given as ``verify=``),
``S3_BUCKET`` (made, with ``seed`` in it, by the test).
"""

import itertools
import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from poolclient.integrations.botocore import use_registry

BUCKET = os.environ["S3_BUCKET"]
# One attempt per call: an error is a 502 the test sees, not a retry that hides it.
CONFIG = Config(s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 1})

s3 = use_registry(boto3.client("s3", endpoint_url=os.environ["S3_URL"], region_name="us-east-1",
                               verify=os.environ["S3_CA"], config=CONFIG))


def _stamp(request, **kwargs):
    request.headers["X-Client-Pid"] = str(os.getpid())


s3.meta.events.register("before-send.s3", _stamp)
_keys = itertools.count()


def call(path: str) -> dict:
    if path == "/put":
        key = f"w/{os.getpid()}/{next(_keys)}"
        return {"etag": s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 512)["ETag"]}
    if path == "/get":
        return {"bytes": len(s3.get_object(Bucket=BUCKET, Key="seed")["Body"].read())}
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="seed", MaxKeys=5)
    return {"keys": [o["Key"] for o in listed.get("Contents", [])]}


for _ in range(int(os.environ.get("MASTER_CALLS", "0"))):
    s3.head_bucket(Bucket=BUCKET)


def app(environ, start_response):
    try:
        status, document = "200 OK", call(environ["PATH_INFO"])
    except (BotoCoreError, ClientError) as exc:
        status, document = "502 Bad Gateway", {"error": type(exc).__name__, "text": str(exc)}
    body = json.dumps({**document, "pid": os.getpid()}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
