"""An app with a module-level ``requests.Session`` used at import: under ``--preload`` its
kept-alive connection, made in gunicorn's master, is inherited by every worker (the hazard
``poolclient.inherited`` names). Handlers never use it."""

import json
import os

import requests

session = requests.Session()
session.get(os.environ["UPSTREAM_URL"] + "/at-import", verify=os.environ["UPSTREAM_CA"],
            timeout=5).raise_for_status()


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
