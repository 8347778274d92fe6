"""Process ownership of the registries.

# design: a forked child must never use, shut down or unwrap a connection it inherited.
# Writing on one corrupts the parent's TLS stream (bad record MAC, or the child reading the
# parent's response); ``shutdown()`` ends the TCP connection for both processes and
# ``unwrap()`` ends the parent's TLS session. What is safe is forgetting: the child drops its
# references, and when urllib3's finalizers later close those sockets they only release the
# child's file descriptors (close(2), no FIN while the parent holds the socket, and stdlib
# ssl sends no close_notify on close). HTTP/2 connections, whose close writes a GOAWAY, are
# never created by poolclient's pool classes.
#
# Forgetting must not run urllib3's finalizers in the child either: they drain each pool's
# queue under its lock, and a lock another parent thread held at fork time is held forever
# in the child, so the fork handler would hang. Inherited pools are therefore buried: kept
# referenced for the life of the child and never touched again. Only the child's copies of
# the idle sockets' file descriptors are released (read without locks: the child has one
# thread), so the parent's later close still reaches the upstream as a FIN.
#
# Two layers detect a fork:
# 1. ``os.register_at_fork(after_in_child=...)`` runs in the child of every ``os.fork()``
#    (gunicorn, multiprocessing 'fork') before any other code. It only rebinds: each live
#    registry forgets its pools and gets a new lock, because a lock another thread held at
#    fork time stays held forever in the child.
# 2. Forks made in C without the hooks (uWSGI without py-call-osafterfork) are caught by a
#    pid comparison on every access; see ``Registry._pools``.
#
# The handler must be cheap and must not raise: uvloop runs at-fork hooks around subprocess
# spawns, and CPython swallows handler exceptions, printing only "Exception ignored".
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class _ForkAware(Protocol):
    def _forget_after_fork(self) -> None: ...


_registries: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_graveyard: list[object] = []


def bury(inherited: object) -> None:
    """Keep ``inherited`` alive and untouched in this child, so no finalizer of it runs."""
    _graveyard.append(inherited)

# How many callers of this process may need a connection at once: the pool size used when
# POOLCLIENT_MAXSIZE is unset. The gunicorn hooks set it per worker (its thread count).
_concurrency = 10


def concurrency() -> int:
    """The default connections per origin for registries of this process."""
    return _concurrency


def set_concurrency(callers: int) -> None:
    global _concurrency
    _concurrency = max(1, callers)


def track(registry: _ForkAware) -> None:
    """Have ``registry`` forget its pools in the child of every fork."""
    _registries.add(registry)


def forget_inherited() -> None:
    """Make every registry of this process forget the pools it inherited (never closing them)."""
    _after_in_child()


def _after_in_child() -> None:
    for registry in list(_registries):
        try:
            registry._forget_after_fork()
        except Exception:  # noqa: BLE001 - must not raise; the pid check is the backstop
            pass


# Handlers cannot be unregistered, so this runs once, at import.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_in_child)
