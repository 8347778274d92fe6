"""Async pools for ASGI apps: one bounded, counted httpcore2 pool per origin, for each
process and each running event loop.

Use it through the registry, never directly: the transports that the async SDKs and
``httpx2.AsyncClient`` / ``httpx.AsyncClient`` take are
:meth:`poolclient.Registry.httpx2_async_transport` and
:meth:`poolclient.Registry.httpx_async_transport`, and :mod:`poolclient.asgi` puts the
registry in every request's ``scope["state"]``.

Why per loop: an asyncio pool's locks, events and sockets belong to the loop that first
used them (a second loop fails with "bound to a different event loop"), and an event loop
does not survive a fork. So each (pid, loop) gets pools of its own, built lazily inside
that loop; pools left by a fork or by a loop that has closed are dropped without awaiting
anything and without writing on their sockets (see :mod:`.pools`).

``pip install 'poolclient[asgi]'`` (Python 3.11+, as httpcore2). Nothing here is imported
by ``import poolclient`` or the WSGI hooks.
"""
