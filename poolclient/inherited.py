"""Connections a forked worker inherited that no poolclient pool owns: the fork hazard
poolclient cannot fix, named where it can be fixed.

Under ``--preload`` a client made and used at import, in gunicorn's master (a module-level
``requests.Session``, an SDK client, a database connection), leaves an open socket that
every worker inherits. Two processes then write on one TCP connection, and for TLS on one
encrypted stream: bad record MACs, one worker reading another's response. poolclient's own
connections are closed in the master before the fork (``pre_fork``) and dropped in the
child (``_fork``); the others are not its to touch (closing or shutting one down would end
it for the master too, see ``_fork``). So the gunicorn ``post_fork`` hook lists them
(:func:`scan`), and each worker says so once per connection, in a WARNING on the
``poolclient`` logger, in ``/health`` (``inherited_connections``) and in ``/metrics``
(``poolclient_inherited_connections``); with ``POOLCLIENT_INHERITED=fail`` the worker does
not boot instead.

Reading only: the process's file descriptors and the kernel's TCP tables in ``/proc``
(Linux; elsewhere nothing is found). No socket is opened, read, written or closed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from dataclasses import dataclass

from .errors import PoolClientError

log = logging.getLogger("poolclient")

_ESTABLISHED = "01"


@dataclass(frozen=True)
class Inherited:
    """One inherited TCP connection: whom it is to, and its descriptor in this process."""

    peer: str  # "host:port", IPv6 hosts in brackets
    fd: int

    def as_dict(self) -> dict[str, object]:
        return {"peer": self.peer, "fd": self.fd}


class InheritedConnectionError(PoolClientError, RuntimeError):
    """This worker inherited connections it must not use (``POOLCLIENT_INHERITED=fail``)."""

    def __init__(self, found: tuple[Inherited, ...]) -> None:
        self.found = found
        peers = ", ".join(f"{c.peer} (fd {c.fd})" for c in found)
        super().__init__(f"process {os.getpid()} inherited {len(found)} connection(s) no "
                         f"poolclient pool owns: {peers} (POOLCLIENT_INHERITED=fail)")


_found: tuple[Inherited, ...] = ()
_scanned_pid = 0


def found() -> tuple[Inherited, ...]:
    """What the last :func:`scan` in this process found (nothing before one ran)."""
    return _found if _scanned_pid == os.getpid() else ()


def scan() -> tuple[Inherited, ...]:
    """The established TCP connections this process holds now, remembered for
    :func:`found`. Run right after a fork, it is what the process inherited."""
    global _found, _scanned_pid
    by_inode: dict[str, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile, or the listing's own descriptor
        if target.startswith("socket:["):
            by_inode[target[8:-1]] = int(name)
    connections = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for inode, peer in _established(f"/proc/self/net/{table}", v6):
            if inode in by_inode:
                connections.append(Inherited(peer, by_inode[inode]))
    _found, _scanned_pid = tuple(sorted(connections, key=lambda c: c.fd)), os.getpid()
    return _found


def warn(connections: tuple[Inherited, ...]) -> None:
    """One WARNING per connection: where it goes, the risk, and the fix."""
    for conn in connections:
        log.warning(
            "process %d inherited a TCP connection to %s (fd %d) from the process it was "
            "forked from, which no poolclient pool owns: a client made and used before the "
            "fork (a module-level client under --preload). This process and its siblings "
            "now share one connection (for TLS one encrypted stream) and will corrupt it. "
            "Build that client on the registry (environ['http.pool'], "
            "poolclient.get_registry()) or after the fork", os.getpid(), conn.peer, conn.fd)


def _established(path: str, v6: bool) -> list[tuple[str, str]]:
    """(inode, "host:port" of the remote end) of each established socket in a TCP table."""
    try:
        with open(path) as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        return []
    found = []
    for row in rows:
        fields = row.split()
        # sl, local, remote ("HEXADDR:HEXPORT"), state, queues, ..., uid, timeout, inode
        if len(fields) > 9 and fields[3] == _ESTABLISHED:
            address, port = fields[2].split(":")
            found.append((fields[9], _peer(address, int(port, 16), v6)))
    return found


def _peer(hex_address: str, port: int, v6: bool) -> str:
    # The kernel prints the address as 32-bit words in host byte order.
    raw = bytes.fromhex(hex_address)
    words = raw if sys.byteorder == "big" else b"".join(
        raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    host = ipaddress.ip_address(words)
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        return f"{host.ipv4_mapped}:{port}"
    return f"[{host}]:{port}" if v6 else f"{host}:{port}"
