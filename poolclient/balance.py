"""Which of an origin's addresses a sync pool's new connection goes to.

urllib3 resolves the host on every connect and takes the first address that answers,
each with the whole connect timeout: one address gets all the traffic, and a black-holed
one costs a whole timeout (urllib3 #2055). A connection class that mixes
:class:`BalancedConnection` in asks the origin's policy instead (``POOLCLIENT_BALANCE``,
:mod:`poolclient.resilience.addresses`): the least-connected live address first, up to
three of them sharing the connect timeout, each failure reported so that a failing address
is ejected and the name resolved again soon. TLS still checks the certificate against the
host name: only the TCP connect goes to the chosen address.

A connection remembers its address while it is open, so that the policy counts each
address's connections, and the pool asks :meth:`OriginPolicy.usable` before reusing an
idle one: one to an address gone from DNS (or ejected) is closed instead.

Nothing here runs for an IP-address host, for a policy with balancing off, for a pool
that reaches its origin through a proxy, or for a connection made outside a call the
policy admitted (the pool's own ``urlopen`` is what
admits): those connect exactly as urllib3 does.
"""

from __future__ import annotations

import functools
import socket
import sys
from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection

from . import retry
from .resilience import RetryBudgetExhaustedError

if TYPE_CHECKING:
    from .resilience import OriginPolicy


@functools.cache
def balances(cls: type[Any]) -> bool:
    """Whether connections of ``cls`` may go to a chosen address: only when the connect
    underneath is urllib3's own (a SOCKS connection's goes through its proxy)."""
    mro = cls.__mro__
    after = mro[mro.index(BalancedConnection) + 1:] if BalancedConnection in mro else ()
    own = next((klass for klass in after if "_new_conn" in vars(klass)), None)
    return own is HTTPConnection


class BalancedConnection:
    """Mixed into a urllib3 connection class, before it: see the module docstring."""

    policy: OriginPolicy | None = None  # set by the pool when the origin's policy balances
    address: str | None = None  # the address this open connection is connected to
    _connecting: str | None = None  # the address of the TCP connect just made

    # Provided by urllib3's HTTPConnection.
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except BaseException as exc:
            address, self._connecting = self._connecting, None
            if address is not None:  # the TLS handshake failed: the address counts it
                call = retry.current_call.get()
                if call is not None:
                    if isinstance(exc, Exception):
                        call.connect_failed(address)
                    else:  # interrupted (a gevent Timeout): not the address's fault
                        call.connect_abandoned(address)
            raise
        address, self._connecting = self._connecting, None
        if address is not None:
            self.address = address
            call = retry.current_call.get()
            if call is not None:
                call.connected(address)

    def close(self) -> None:
        address = self.address
        if address is not None:
            self.address = None
            policy = self.policy
            if policy is not None:
                policy.disconnected(address)
        super().close()  # type: ignore[misc]

    def _new_conn(self) -> socket.socket:
        policy = self.policy
        call = retry.current_call.get() if policy is not None else None
        if call is None or call.policy is not policy:
            return super()._new_conn()  # type: ignore[misc, no-any-return]
        assert policy is not None
        if policy.resolve is not None and (policy.refresh_due() or not call.candidates()):
            # The first connect, or the first after the origin sat unused (the watchdog
            # resolves only origins in use): resolve here, as urllib3 does on every connect.
            policy.resolve()
        timeout = self.timeout
        numeric = isinstance(timeout, (int, float))
        last: Exception | None = None
        try:
            for address, share in call.connect_attempts(timeout if numeric else None):
                try:
                    # Looked up on urllib3's module, as urllib3 does: what patches it
                    # (tests, instrumentation) sees these connects too.
                    sock = connection.create_connection(
                        (address, self.port), share if numeric else timeout,
                        source_address=self.source_address,
                        socket_options=self.socket_options)
                except OSError as exc:
                    call.connect_failed(address)
                    last = self._connect_error(exc, share)
                    continue
                except BaseException:
                    call.connect_abandoned(address)
                    raise
                self._connecting = address
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock
        except RetryBudgetExhaustedError:
            pass  # the next address would be a retry the budget refuses: the last error
        if last is None:  # nothing resolved (the name did not resolve): urllib3's own way
            return super()._new_conn()  # type: ignore[misc, no-any-return]
        raise last

    def _connect_error(self, exc: OSError, timeout: float | None) -> Exception:
        # urllib3's own errors, with its messages: callers and requests map them.
        if isinstance(exc, socket.timeout):
            return ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={timeout})")
        return NewConnectionError(self,  # type: ignore[arg-type]
                                  f"Failed to establish a new connection: {exc}")
