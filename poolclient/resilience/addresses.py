"""An origin's addresses: which ones get new connections, and when to resolve again.

What urllib3 does instead, and why it is not enough: each new connection calls
``getaddrinfo`` and connects to the first address that answers, each with the whole connect
timeout (urllib3 #2055), so one address takes all the traffic and one black-holed address
costs a whole timeout. Here (Envoy's STRICT_DNS with least-request balancing, Go's dialer):

- every address of the name is kept, each with its connections and failed connects;
- a new connection goes to the least-connected live address, counting connects under way
  (concurrent connects would otherwise all pick the same one), ties broken at random (all
  workers got the addresses in the same order, gRFC A62); a retry prefers addresses the call
  has not tried yet (Envoy's ``previous_hosts``);
- a connect tries up to :data:`CANDIDATES` addresses, each given a share of what is left of
  the connect timeout (:func:`connect_share`);
- ``eject_failures`` failed connects in a row eject an address for ``eject_time`` x its
  recent ejections (up to :data:`EJECT_MAX_FACTOR`), plus up to 10 % at random; the
  multiplier decays by one for each ``eject_time`` it stays healthy. Never more than
  ``eject_max_share`` of them, at least one of two or more, never the last one (Envoy's max
  ejection percent and panic threshold guard the same way): a single-address origin is
  left to its breaker;
- resolution is due when the addresses are ``dns_refresh`` seconds old, and at most
  :data:`FORCED_REFRESH_GAP` after a connect failure. The pool resolves (off the request
  path while the origin has connections; on the path of a connect that finds the addresses
  due, the first time and after the origin sat unused) and reports: addresses gone from
  the answer get no new connections, the pool closes their idle ones, and they are
  forgotten when their last connection closes. A failed or empty answer keeps the last
  good list.

No lock, no clock: the policy calls it under its lock with ``now``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection, Iterable

from .settings import PolicySettings

CANDIDATES = 3
MIN_CONNECT_SHARE = 1.0  # seconds; less would fail a merely slow handshake
EJECT_MAX_FACTOR = 10
EJECT_JITTER = 0.1
FORCED_REFRESH_GAP = 1.0  # seconds between resolutions forced by connect failures


def connect_share(left: float, candidates_left: int) -> float:
    """The connect timeout for the next of ``candidates_left`` addresses, with ``left``
    seconds of the connect timeout remaining: an even share, at least
    :data:`MIN_CONNECT_SHARE` (or all that is left), all of it for the last address."""
    if candidates_left <= 1:
        return left
    return max(left / candidates_left, min(left, MIN_CONNECT_SHARE))


class AddressState(enum.Enum):
    LIVE = "live"
    EJECTED = "ejected"
    GONE = "gone"  # no longer in DNS: no new connections


class Address:
    """One address's bookkeeping."""

    __slots__ = ("address", "connecting", "connections", "failures", "ejected_until",
                 "ejections", "gone")

    def __init__(self, address: str) -> None:
        self.address = address
        self.connections = 0
        self.connecting = 0  # connects under way (TCP, then TLS)
        self.failures = 0  # failed connects in a row
        self.ejected_until = 0.0
        self.ejections = 0  # recent ones: the multiplier of the next ejection
        self.gone = False

    def state(self, now: float) -> AddressState:
        if self.gone:
            return AddressState.GONE
        return AddressState.EJECTED if now < self.ejected_until else AddressState.LIVE


class AddressSet:
    """See the module docstring."""

    def __init__(self, settings: PolicySettings, random: Callable[[], float]) -> None:
        self.settings = settings
        self._random = random
        self._addresses: dict[str, Address] = {}
        self.resolved_at: float | None = None
        self.refresh_at = 0.0  # due at once: nothing resolved yet
        self.refreshing = False
        self.refreshes = 0
        self.ejections_total = 0

    def __len__(self) -> int:
        return len(self._addresses)

    def all(self) -> list[Address]:
        return list(self._addresses.values())

    # --- resolution -------------------------------------------------------------------

    def refresh_due(self, now: float) -> bool:
        return not self.refreshing and now >= self.refresh_at

    def in_use(self) -> bool:
        """Whether any address has a connection, or a connect under way."""
        return any(a.connections or a.connecting for a in self._addresses.values())

    def start_refresh(self, now: float, background: bool = False) -> bool:
        """Whether the caller should resolve now (only one caller at a time is told so).
        ``background``: only for an origin in use (with connections): one nobody calls any
        more is not resolved for ever; its next connect resolves first instead."""
        if not self.refresh_due(now) or (background and not self.in_use()):
            return False
        self.refreshing = True
        return True

    def resolved(self, now: float, answer: Iterable[str]) -> tuple[str, ...]:
        """Record a resolution; the addresses it made gone, whose idle connections the pool
        should close. An empty answer keeps the last good list (returns ``()``)."""
        self.refreshing = False
        self.refresh_at = now + self.settings.dns_refresh
        fresh = list(dict.fromkeys(answer))
        if not fresh:
            return ()
        self.resolved_at = now
        self.refreshes += 1
        for address in fresh:
            known = self._addresses.get(address)
            if known is None:
                self._addresses[address] = Address(address)
            else:
                known.gone = False
        newly_gone = []
        keep = set(fresh)
        for address, known in list(self._addresses.items()):
            if address in keep:
                continue
            if not known.gone:
                known.gone = True
                newly_gone.append(address)
            if known.connections == known.connecting == 0:
                del self._addresses[address]
        return tuple(newly_gone)

    def resolve_failed(self, now: float) -> None:
        """A resolution failed: keep the list, try again after the usual interval."""
        self.refreshing = False
        self.refresh_at = now + self.settings.dns_refresh

    # --- choice ----------------------------------------------------------------------

    def candidates(self, now: float, tried: Collection[str] = ()) -> list[str]:
        """Up to :data:`CANDIDATES` addresses for a new connection, best first: live ones,
        untried before tried, least-connected first, ties at random. If none is live (all
        gone, which only an origin that lost every address can be) the ejected ones, the
        soonest back first; ``[]`` if nothing was resolved."""
        live = [a for a in self._addresses.values()
                if not a.gone and now >= a.ejected_until]
        if live:
            ranked = sorted(live, key=lambda a: (a.address in tried,
                                                 a.connections + a.connecting,
                                                 self._random()))
        else:
            ranked = sorted((a for a in self._addresses.values() if not a.gone),
                            key=lambda a: a.ejected_until)
        return [a.address for a in ranked[:CANDIDATES]]

    def usable(self, now: float, address: str) -> bool:
        """Whether an idle connection to ``address`` may carry another request (no: gone
        from DNS or ejected; an address never resolved here is not this set's to judge)."""
        known = self._addresses.get(address)
        return known is None or known.state(now) is AddressState.LIVE

    # --- connections -----------------------------------------------------------------

    def connecting(self, address: str) -> None:
        """A connect to ``address`` begins; it ends in :meth:`connected`,
        :meth:`connect_failed` or :meth:`connect_abandoned`."""
        known = self._addresses.get(address)
        if known is not None:
            known.connecting += 1

    def connected(self, address: str) -> None:
        known = self._addresses.get(address)
        if known is not None:
            known.connecting = max(0, known.connecting - 1)
            known.connections += 1
            known.failures = 0

    def connect_abandoned(self, address: str) -> None:
        """A connect ended neither way (its caller was cancelled): not the address's fault."""
        known = self._addresses.get(address)
        if known is not None:
            known.connecting = max(0, known.connecting - 1)
            self._forget_if_done(known)

    def disconnected(self, address: str) -> None:
        known = self._addresses.get(address)
        if known is not None:
            known.connections = max(0, known.connections - 1)
            self._forget_if_done(known)

    def _forget_if_done(self, known: Address) -> None:
        if known.gone and known.connections == known.connecting == 0:
            del self._addresses[known.address]

    def connect_failed(self, now: float, address: str) -> float | None:
        """Count a failed connect; when it ejects the address, until when."""
        # The name may have moved: resolve soon, but not more than once a second however
        # many connects fail.
        soonest = now if self.resolved_at is None else max(
            now, self.resolved_at + FORCED_REFRESH_GAP)
        self.refresh_at = min(self.refresh_at, soonest)
        known = self._addresses.get(address)
        if known is None:
            return None
        known.connecting = max(0, known.connecting - 1)
        if known.gone:
            self._forget_if_done(known)
            return None
        known.failures += 1
        if known.failures < self.settings.eject_failures or not self._may_eject(now):
            return None
        s = self.settings
        if known.ejected_until:  # healthy since the last ejection ended: decay
            healthy = max(0.0, now - known.ejected_until)
            known.ejections = max(0, known.ejections - int(healthy // s.eject_time))
        # Capped, so that an address ejected a hundred times recovers as fast as one
        # ejected ten times once it is healthy.
        known.ejections = min(known.ejections + 1, EJECT_MAX_FACTOR)
        known.ejected_until = now + s.eject_time * known.ejections * (
            1 + EJECT_JITTER * self._random())
        known.failures = 0
        self.ejections_total += 1
        return known.ejected_until

    def _may_eject(self, now: float) -> bool:
        present = [a for a in self._addresses.values() if not a.gone]
        if len(present) < 2:
            return False
        most = min(len(present) - 1,
                   max(1, math.floor(len(present) * self.settings.eject_max_share)))
        ejected = sum(1 for a in present if now < a.ejected_until)
        return ejected < most
