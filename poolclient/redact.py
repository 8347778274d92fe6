"""Keep credentials out of logs, stats and error answers.

URLs carry secrets in two places: the userinfo (``https://user:pass@host``) and the query
(``?access_token=...``). Which query parameters are secret cannot be known, so every query
value is masked. Pool stats never hold a URL at all (only scheme, host and port), and
``Authorization`` headers are never logged by urllib3, requests or poolclient.

urllib3 writes request targets into its log records (``"GET /path?query HTTP/1.1" 200``
at DEBUG, ``Retrying ... /path?query`` at WARNING, ``Redirecting`` with full URLs at
INFO); :func:`install` puts a filter on exactly those loggers that masks them before any
handler sees the record.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# Greedy up to the last "@" before the path: a password may itself hold an "@".
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#]*@")
# A value runs to the next separator or whitespace, quotes included (urllib3 leaves "'"
# unencoded); masking a closing quote too is the safe side.
_QUERY_VALUE = re.compile(r"(?P<key>[?&;][^\s=&#?]*=)[^\s&#]*")

# The loggers that format URLs or request targets into their records.
_LOGGERS = ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry",
            "urllib3.connection", "poolclient.connections")


def redact(text: str) -> str:
    """``text`` with URL passwords and query values replaced by ``***``."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    return _QUERY_VALUE.sub(lambda m: m.group("key") + MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def install() -> None:
    """Put one :class:`RedactingFilter` on each logger that can write a URL (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
