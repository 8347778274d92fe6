"""The relay as a one-file Django project: a view that reaches the pools through the request.

Run: ``UPSTREAM_URL=... gunicorn -c gunicorn.conf.py app.django_example:application``.
``application`` is Django's WSGI handler wrapped in the middleware, as a project's
``wsgi.py`` would do it; under Django's test client (which bypasses WSGI) ``from_request``
falls back to the process-global registry, which is the same pools.
"""

from __future__ import annotations

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="poolclient-example-not-a-secret",  # noqa: S106 - an example's
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
    )
    django.setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402 - after settings
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from app.relay import UPSTREAM_ERRORS, classify, upstream_url  # noqa: E402
from poolclient import PoolClientMiddleware, from_request  # noqa: E402


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    pool = from_request(request)
    try:
        response = pool.request("GET", f"{upstream_url()}/items/{item_id}")
    except UPSTREAM_ERRORS as exc:
        status, cause, headers = classify(exc, pool.settings.pool_timeout)
        answer = JsonResponse({"error": cause}, status=status)
        for name, value in headers:
            answer[name] = value
        return answer
    return JsonResponse({"framework": "django", "upstream": response.json()},
                        status=response.status)


urlpatterns = [path("items/<int:item_id>", item)]
application = PoolClientMiddleware(WSGIHandler())
