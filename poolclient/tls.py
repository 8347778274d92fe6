"""A TLS context per pool, and session resumption, for the connections a pool opens again.

**When it matters.** A pool reuses its connections, so a handshake happens only when one
must be opened again: ``POOLCLIENT_IDLE_TIMEOUT`` or ``POOLCLIENT_MAX_LIFETIME`` closed it,
the upstream closed it or restarted, load grew the pool, a new worker started. For each of
these urllib3 (and so requests) builds a new ``SSLContext``, reads the CA bundle into it
and makes a full handshake. ``bench/handshake.py`` (nginx on loopback, Python 3.11,
OpenSSL 3.0, medians of 300) puts a new connection plus one GET at 19.3 ms, 18.8 ms of it
client CPU, with a 145-certificate bundle, nearly all of it reading the bundle (17.9 ms;
``load_default_certs()``, urllib3's choice when no CA is given, costs the same). With the
bundle read once per pool it is 1.3 ms; resumed, 1.0 ms (TLS 1.2) to 1.3 ms (TLS 1.3); a
GET on a kept connection, 0.12 ms. Resuming skips the certificate checks and the server's
signature: 0.3-0.5 ms here with TLS 1.2, or TLS 1.3 with an RSA certificate, nothing
measurable with TLS 1.3 and ECDSA. On a network it also saves one of TLS 1.2's two round
trips; TLS 1.3 takes one either way.

**What it does.** Each pool gets one ``SSLContext``, made by urllib3's
``create_urllib3_context`` from the pool's settings (``cert_reqs``, TLS versions), with the
pool's CAs (or the system's) and client certificate loaded once. For each connect the
connection lends urllib3 that context as its ``ssl_context``, so the handshake, the
hostname and fingerprint checks and ``is_verified`` stay urllib3's. The context's
``sslsocket_class`` (which the ssl docs allow to be set per context) offers the pool's
latest session before the handshake; the session is read once the connection's first
response has arrived, because TLS 1.3 sends its tickets after the handshake, and only
after a full handshake or once the kept session has used half its lifetime: Python hands
out a copy of a session, serialised and parsed again, certificates and all, 0.2 ms each
way, as much as resuming saves with TLS 1.3 and ECDSA (``docs/handshake.md``). Memory: one
context per pool (about 0.9 MB with that bundle), where urllib3 keeps one per open
connection.

**Where a session may be used.** Only where it came from:

- in its pool: each keeps its own, and pools are keyed by origin and TLS settings;
- with its context (Python refuses any other). A context is rebuilt, its sessions with it,
  when a setting changes or one of its CA, certificate or key files changes on disk
  (urllib3 rereads them on every connect): a resumed handshake checks no certificate, so a
  session must not outlive the trust it was checked with;
- for the hostname it was verified for: OpenSSL resumes a session offered under another
  name, and then verifies no hostname at all (``tests/test_tls.py`` shows it);
- in its process: the context and its sessions are rebuilt when the pid changes. A forked
  child would otherwise present the parent's session objects, copied OpenSSL state of
  another process: the parent and every child resuming from one secret and showing one
  ticket (linkable, and a server that accepts a ticket once resumes only one of them).
  The registry drops inherited pools anyway (``_fork``); this covers bare pools.

Everything else is urllib3's own connect, untouched: a caller's own ``ssl_context``,
proxies, the deprecated ``ssl_version``, pyOpenSSL, and any context that cannot be built
(urllib3 then raises its own error: a missing CA file, an encrypted key without a
password). A session the server no longer knows costs a full handshake, no error; a
handshake that fails after offering one drops it, so the connect retry offers none.

Protocol notes: urllib3 sets ``OP_NO_TICKET``, which is kept, so TLS 1.2 resumes by
session ID and only with servers that cache sessions (nginx ``ssl_session_cache``); TLS 1.3
resumes with tickets regardless. Connections of one pool that connect at the same time
present the same ticket, and so do the pool's reconnects until half the kept session's
lifetime is gone; servers that accept a ticket once give the others a full handshake, and
its session is the one kept next.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import SSLError
from urllib3.util import ssl_
from urllib3.util.ssl_ import create_urllib3_context, resolve_cert_reqs

if TYPE_CHECKING:
    from collections.abc import Callable

    from urllib3.response import HTTPResponse

    _ConnectionBase = HTTPSConnection
    _PoolBase = HTTPSConnectionPool
    _SocketBase = ssl.SSLSocket
else:
    _ConnectionBase = _PoolBase = _SocketBase = object

__all__ = ["HTTP11Connection", "PoolTLS", "ResumingConnection", "ResumingPool"]


def _http11_connection() -> type[HTTPSConnection]:
    # urllib3.http2.inject_into_urllib3() puts its HTTP/2 connection in the place of
    # HTTPSConnection, and keeps the one it replaced.
    from urllib3 import http2

    original = getattr(http2, "orig_HTTPSConnection", None)
    return original if original is not None else HTTPSConnection


#: urllib3's HTTP/1.1 ``HTTPSConnection``, whatever was imported first. poolclient's pools
#: speak HTTP/1.1 only: urllib3's HTTP/2 is experimental, and an HTTP/2 connection's close
#: writes a GOAWAY frame, which a forked child must never send on its parent's connection.
if TYPE_CHECKING:
    HTTP11Connection = HTTPSConnection
else:
    HTTP11Connection = _http11_connection()
HTTP11 = ["http/1.1"]

# The pool state of each context this module built, for its sockets to find.
_owners: weakref.WeakKeyDictionary[ssl.SSLContext, _Context] = weakref.WeakKeyDictionary()

# Attributes urllib3 loads into the context on every connect when they are set; they are
# cleared while urllib3 connects with a context that holds them already.
_LOADED_ONCE = ("ssl_context", "ca_certs", "ca_cert_dir", "ca_cert_data", "cert_file",
                "key_file", "key_password")


class PoolTLS:
    """One pool's TLS state: its context, rebuilt when needed, and the latest session.

    :param resume: ``False`` keeps the shared context (most of the gain) and makes every
        handshake a full one.
    """

    def __init__(self, resume: bool = True) -> None:
        self.resume = resume
        self._current: _Context | None = None
        self._lock_pid = os.getpid()
        self._build_lock = threading.Lock()

    def prepare(self, conn: HTTPSConnection) -> _Context | None:
        """The context ``conn`` should connect with, or ``None`` to leave it to urllib3."""
        if (conn.ssl_context is not None or conn.proxy is not None
                or conn.ssl_version is not None or ssl_.IS_PYOPENSSL):
            return None
        settings = _settings(conn)
        current = self._current
        if current is not None and current.fits(settings):
            return current
        # One build per pool, not one per thread that connects meanwhile: each costs a
        # CA load, and sessions are kept only with the context their connection used.
        with self._lock():
            current = self._current
            if current is None or not current.fits(settings):
                current = _Context.build(conn, settings)
                if current is None:
                    return None
                self._current = current
            return current

    def _lock(self) -> threading.Lock:
        # A lock another thread held when the process forked would stay held in the child.
        pid = os.getpid()
        if self._lock_pid != pid:
            self._lock_pid, self._build_lock = pid, threading.Lock()
        return self._build_lock


class _Context:
    """A context built for one pool in one process, and the last session it made."""

    def __init__(self, context: ssl.SSLContext, settings: tuple[Any, ...],
                 files: tuple[str, ...], stamp: tuple[Any, ...]) -> None:
        self.context = context
        self.settings = settings
        self.files = files
        self.stamp = stamp
        self.last: tuple[str | None, ssl.SSLSession] | None = None

    def fits(self, settings: tuple[Any, ...]) -> bool:
        return self.settings == settings and self.stamp == _stamp(self.files)

    @classmethod
    def build(cls, conn: HTTPSConnection, settings: tuple[Any, ...]) -> _Context | None:
        ca = (conn.ca_certs, conn.ca_cert_dir, conn.ca_cert_data)
        if any(ca):
            files = [p for p in ca[:2] if p]
        else:
            defaults = ssl.get_default_verify_paths()
            files = [p for p in (defaults.cafile, defaults.capath) if p]
        files += [p for p in (conn.cert_file, conn.key_file) if p]
        stamp = _stamp(tuple(files))  # before reading: a file replaced meanwhile is reread
        try:
            context = create_urllib3_context(
                ssl_minimum_version=conn.ssl_minimum_version,
                ssl_maximum_version=conn.ssl_maximum_version,
                cert_reqs=resolve_cert_reqs(conn.cert_reqs),
            )
            # The same choice as urllib3's: the given CAs, else the system's.
            if any(ca):
                context.load_verify_locations(*ca)
            else:
                context.load_default_certs()
            if conn.cert_file:
                # Without a password OpenSSL would ask for one on the terminal; urllib3
                # refuses such a key with its own error, which the fallback lets it raise.
                password = conn.key_password if conn.key_password is not None else _no_password
                context.load_cert_chain(conn.cert_file, conn.key_file, password)
        except (OSError, ValueError, _PasswordNeeded):
            return None
        if not isinstance(context, ssl.SSLContext):  # pyOpenSSL's, injected meanwhile
            return None
        _Http11Alpn.install(context)
        context.sslsocket_class = _offering(context.sslsocket_class)
        built = cls(context, settings, tuple(files), stamp)
        _owners[context] = built
        return built

    def offer(self, hostname: str | None) -> ssl.SSLSession | None:
        last = self.last
        if last is None or last[0] != hostname:
            return None
        session = last[1]
        if session.time + session.timeout <= time.time():
            self.last = None
            return None
        return session

    def keep(self, sock: ssl.SSLSocket) -> None:
        # Reading a socket's session copies it whole (CPython's _ssl serialises it and
        # parses it back, the server's certificates included: 0.2 ms here, as much as
        # resuming saves with TLS 1.3 and ECDSA). So a connection that resumed the session
        # kept here leaves it in place until half its lifetime is gone; a full handshake's
        # is taken.
        last = self.last
        if (last is not None and last[0] == sock.server_hostname and sock.session_reused
                and time.time() - last[1].time < last[1].timeout / 2):
            return
        session = sock.session
        if session is None:
            return
        # A TLS 1.3 session is resumable only with a ticket; a TLS 1.2 one by its ID too.
        if session.has_ticket or (sock.version() != "TLSv1.3" and session.id):
            self.last = (sock.server_hostname, session)


class _PasswordNeeded(Exception):
    pass


def _no_password() -> str:
    raise _PasswordNeeded


class _Http11Alpn:
    """A context's ``set_alpn_protocols`` that offers HTTP/1.1 only, set once.

    urllib3 sets its list on every connect: ``["h2"]`` once its HTTP/2 is turned on, which
    a server would take up, and then read HTTP/1.1 as garbage. And setting the list anew on
    a context shared by threads frees the buffer another thread's ``SSL_new`` may be
    copying, which runs without the GIL.
    """

    def __init__(self, set_protocols: Callable[[list[str]], None]) -> None:
        self._set = set_protocols
        set_protocols(HTTP11)

    @classmethod
    def install(cls, context: ssl.SSLContext) -> None:
        if not isinstance(getattr(context, "set_alpn_protocols", None), cls):
            setattr(context, "set_alpn_protocols",  # noqa: B010 - mypy: method assignment
                    cls(context.set_alpn_protocols))

    def __call__(self, protocols: list[str]) -> None:
        pass  # HTTP/1.1, set once


class _OffersSession(_SocketBase):
    """What the pool context's socket class adds: the pool's session, set before the
    handshake that urllib3's ``wrap_socket`` starts."""

    def do_handshake(self, *args: Any, **kwargs: Any) -> None:
        owner = _owners.get(self.context)
        # ``_session``, what ``wrap_socket`` was given, rather than the ``session``
        # property, which copies the socket's session whole (see ``_Context.keep``).
        if (owner is not None and not self.server_side
                and getattr(self, "_session", None) is None):
            session = owner.offer(self.server_hostname)
            if session is not None:
                try:
                    self.session = session
                except ValueError:  # not this context's after all: a full handshake
                    owner.last = None
        super().do_handshake(*args, **kwargs)


_socket_classes: dict[type[ssl.SSLSocket], type[ssl.SSLSocket]] = {}


def _offering(base: type[ssl.SSLSocket]) -> type[ssl.SSLSocket]:
    # Derived from the context's own class, which is gevent's under gevent's monkey patch.
    found = _socket_classes.get(base)
    if found is None:
        found = type(f"Resuming{base.__name__}", (_OffersSession, base), {})
        _socket_classes[base] = found
    return found


def _settings(conn: HTTPSConnection) -> tuple[Any, ...]:
    return (os.getpid(), resolve_cert_reqs(conn.cert_reqs), conn.ssl_minimum_version,
            conn.ssl_maximum_version, conn.ca_certs, conn.ca_cert_dir, conn.ca_cert_data,
            conn.cert_file, conn.key_file, conn.key_password, conn.assert_hostname,
            conn.assert_fingerprint)


def _stamp(files: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    stamps: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class ResumingConnection(_ConnectionBase):
    """Mixin for an ``HTTPSConnection`` class: connect with the pool's context and session.

    Without ``tls`` (set by :class:`ResumingPool`) it is urllib3's connection unchanged.
    """

    tls: PoolTLS | None = None
    _tls_unread: _Context | None = None  # connected with it; its session not read yet

    def connect(self) -> None:
        tls = self.tls
        ready = tls.prepare(self) if tls is not None else None
        self._tls_unread = None
        if ready is None:
            if isinstance(self.ssl_context, ssl.SSLContext):  # the caller's own
                _Http11Alpn.install(self.ssl_context)
            super().connect()
            _refuse_h2(self)
            return
        saved = {name: getattr(self, name) for name in _LOADED_ONCE}
        for name in _LOADED_ONCE:
            setattr(self, name, None)
        self.ssl_context = ready.context
        try:
            super().connect()
        except BaseException:
            ready.last = None  # the connect retry must not offer it again
            raise
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
        self._tls_unread = ready

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]  # as urllib3's
        response = super().getresponse()
        if self._tls_unread is not None:  # only the first response after a connect
            self._read_session()
        return response

    def close(self) -> None:
        # http.client closes the connection inside getresponse() when the response ends
        # it (Connection: close), after reading the headers: the last moment to read it.
        self._read_session()
        super().close()

    def _read_session(self) -> None:
        ready, self._tls_unread = self._tls_unread, None
        if (ready is not None and self.tls is not None and self.tls.resume
                and isinstance(self.sock, ssl.SSLSocket)):
            ready.keep(self.sock)


def _refuse_h2(conn: HTTPSConnection) -> None:
    # A context urllib3 built for this connect alone (behind a proxy, with ssl_version,
    # pyOpenSSL) offered what urllib3 offers: with its HTTP/2 turned on, h2 only.
    sock = conn.sock
    selected = getattr(sock, "selected_alpn_protocol", None)
    if selected is not None and selected() == "h2":
        conn.close()
        raise SSLError(
            "the server chose HTTP/2, which urllib3's inject_into_urllib3() offered; "
            "poolclient's pools speak HTTP/1.1 only")


class ResumingPool(_PoolBase):
    """Mixin for an ``HTTPSConnectionPool`` class: its connections share one
    :class:`PoolTLS`, so a new one resumes the session of an earlier one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tls = PoolTLS()

    def _new_conn(self) -> Any:
        conn = super()._new_conn()
        if isinstance(conn, ResumingConnection):
            conn.tls = self.tls
        return conn
