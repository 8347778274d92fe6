"""The example service, ready for any WSGI server: ``app.wsgi:application``."""

from poolclient import PoolClientMiddleware

from .relay import Relay, upstream_url

application = PoolClientMiddleware(Relay(upstream_url()))
