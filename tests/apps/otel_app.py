"""The example relay (``app.wsgi``) and an OpenAI client on the sync httpx2 transport
(``tests/apps/sdk_app.py``) in one WSGI app, as one service under
``opentelemetry-instrument`` runs both: ``/openai`` goes to the SDK app, everything else
to the relay (``/upstream/<path>``).

With ``MASTER_CALLS`` (the SDK app's calls at import, in the master under ``--preload``),
the master's spans and metrics are exported at import too, before any fork, so that the
OTLP exporters' connections are open when gunicorn forks."""

import os

from app.wsgi import application as relay
from tests.apps import sdk_app

if int(os.environ.get("MASTER_CALLS", "0")):
    from opentelemetry import metrics, trace

    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    metrics.get_meter_provider().force_flush()  # type: ignore[attr-defined]


def application(environ, start_response):
    target = sdk_app.app if environ["PATH_INFO"].startswith("/openai") else relay
    return target(environ, start_response)
