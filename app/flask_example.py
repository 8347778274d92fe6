"""The relay as a Flask app: a view that reaches the pools through the request.

Run: ``UPSTREAM_URL=... gunicorn -c gunicorn.conf.py app.flask_example:app``. The gunicorn
hooks wrap ``app`` in the middleware; ``app.wsgi_app`` is wrapped here too, so that Flask's
test client and ``flask run`` get the same environ (wrapping twice is a no-op).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from app.relay import UPSTREAM_ERRORS, classify, upstream_url
from poolclient import PoolClientMiddleware, from_request

app = Flask(__name__)
app.wsgi_app = PoolClientMiddleware(app.wsgi_app)  # type: ignore[method-assign]


@app.get("/items/<int:item_id>")
def item(item_id: int) -> Any:
    pool = from_request(request)
    try:
        response = pool.request("GET", f"{upstream_url()}/items/{item_id}")
    except UPSTREAM_ERRORS as exc:
        status, cause, headers = classify(exc, pool.settings.pool_timeout)
        return jsonify(error=cause), status, headers
    return jsonify(framework="flask", upstream=response.json()), response.status

