"""Settings: one declarative table, read from the environment or given in code.

Each field of :class:`Settings` carries its environment variable, a validator and a doc
string in its metadata; ``python -m poolclient`` prints the table the README shows.
A bad value raises :class:`~poolclient.errors.ConfigError` whose one-line message names the
setting, the value and what is allowed, before any pool exists.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .redact import redact

Validator = Callable[[object], Any]


def _number(value: object, kind: type[int] | type[float]) -> int | float:
    # bool is an int subclass: True must not pass as a pool size of 1.
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = value.strip()
        return int(value) if kind is int else float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    raise ValueError


def _integer(value: object, minimum: int) -> int:
    allowed = f"expected an integer of at least {minimum}"
    try:
        number = int(_number(value, int))
    except ValueError:
        raise ValueError(allowed) from None
    if number < minimum:
        raise ValueError(allowed)
    return number


def positive_int(value: object) -> int:
    """An integer of at least 1."""
    return _integer(value, 1)


def non_negative_int(value: object) -> int:
    """An integer of at least 0."""
    return _integer(value, 0)


def optional_positive_int(value: object) -> int | None:
    """Unset, or an integer of at least 1."""
    if value is None or value == "":
        return None
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError("expected an integer of at least 1, or unset for the default") from None


def _seconds(value: object, zero_allowed: bool) -> float:
    allowed = ("expected a number of seconds, 0 or more" if zero_allowed
               else "expected a number of seconds greater than 0")
    try:
        number = float(_number(value, float))
    except ValueError:
        raise ValueError(allowed) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_allowed):
        raise ValueError(allowed)
    return number


def positive_seconds(value: object) -> float:
    """A finite number of seconds greater than 0."""
    return _seconds(value, zero_allowed=False)


def non_negative_seconds(value: object) -> float:
    """A finite number of seconds, 0 or more."""
    return _seconds(value, zero_allowed=True)


UNIX = "unix"  # callers on a unix socket, which have no address


def urls(value: object) -> str:
    """Comma-separated http:// or https:// URLs; empty for none."""
    if not isinstance(value, str):
        raise ValueError("expected comma-separated http:// or https:// URLs")
    items = [part.strip() for part in value.split(",") if part.strip()]
    for item in items:
        if not item.startswith(("http://", "https://")) or len(item) < 10:
            raise ValueError("expected comma-separated http:// or https:// URLs")
    return ",".join(items)


def networks(value: object) -> str:
    """Comma-separated IP networks (CIDR) and ``unix``, normalised; empty allows none."""
    if not isinstance(value, str):
        raise ValueError("expected comma-separated IP networks such as 127.0.0.0/8,::1")
    parsed = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item.lower() == UNIX:
            parsed.append(UNIX)
            continue
        try:
            parsed.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (expected CIDR such as "
                             "10.0.0.0/8 or an address)") from None
    return ",".join(parsed)


def optional_secret(value: object) -> str | None:
    """Unset, or a string of at least 16 characters without spaces."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) < 16 or any(c.isspace() for c in value):
        raise ValueError("expected at least 16 characters without spaces, or unset")
    return value


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def boolean(value: object) -> bool:
    """true/false, yes/no, on/off or 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected one of true/false, yes/no, on/off, 1/0")


_LIMITS = {"maxsize": positive_int, "pool_timeout": positive_seconds}
OriginKey = tuple[str, str, int]


def _origin_limits(value: object) -> dict[OriginKey, dict[str, float]]:
    allowed = ("expected entries 'https://host[:port] maxsize=N pool_timeout=S' separated by "
               "';' (either limit may be left out)")
    if not isinstance(value, str):
        raise ValueError(allowed)
    found: dict[OriginKey, dict[str, float]] = {}
    for entry in filter(None, (part.strip() for part in value.split(";"))):
        origin, *pairs = entry.split()
        try:
            url = urlsplit(origin)
            port = url.port
        except ValueError:
            raise ValueError(f"{entry!r}: {allowed}") from None
        if (url.scheme not in ("http", "https") or not url.hostname or not pairs
                or url.path not in ("", "/") or url.query or url.username):
            raise ValueError(f"{entry!r}: {allowed}")
        limits: dict[str, float] = {}
        for pair in pairs:
            name, _, raw = pair.partition("=")
            if name not in _LIMITS:
                raise ValueError(f"{entry!r}: unknown limit {name!r}; {allowed}")
            try:
                limits[name] = _LIMITS[name](raw)
            except ValueError as exc:
                raise ValueError(f"{entry!r}: {name}: {exc}") from None
        default_port = 443 if url.scheme == "https" else 80
        found[(url.scheme, url.hostname, port or default_port)] = limits
    return found


def origin_limits(value: object) -> str:
    """Per-origin limits, 'https://host[:port] maxsize=N pool_timeout=S; ...'; normalised."""
    return "; ".join(
        f"{scheme}://{f'[{host}]' if ':' in host else host}:{port} "
        + " ".join(f"{k}={v:g}" for k, v in limits.items())
        for (scheme, host, port), limits in _origin_limits(value).items())


def inherited_policy(value: object) -> str:
    """warn or fail."""
    if isinstance(value, str) and value.strip().lower() in ("warn", "fail"):
        return value.strip().lower()
    raise ValueError("expected warn or fail")


LOOP_CALL_POLICIES = ("warn", "error", "off")


def loop_calls_policy(value: object) -> str:
    """warn, error or off."""
    if isinstance(value, str) and value.strip().lower() in LOOP_CALL_POLICIES:
        return value.strip().lower()
    raise ValueError("expected warn, error or off")


def ca_bundle(value: object) -> str | None:
    """Unset, or the path of a readable PEM file holding at least one certificate."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError("expected the path of a PEM file of CA certificates")
    path = os.fspath(value)
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            pem = handle.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"expected a readable PEM file of CA certificates ({reason})") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("expected a PEM file of CA certificates; this file holds none")
    return os.path.abspath(path)


def _setting(env: str, default: object, validator: Validator, doc: str,
             secret: bool = False, shown: Callable[[str], str] | None = None) -> Any:
    metadata = {"env": env, "validator": validator, "doc": doc, "secret": secret,
                "shown": shown}
    return field(default=default, repr=not secret, metadata=metadata)


PRIVATE_NETWORKS = ",".join([
    "127.0.0.0/8", "::1/128",  # loopback
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",  # private (RFC 1918, 4193)
    UNIX,
])


@dataclass(frozen=True)
class Settings:
    """The settings of one :class:`~poolclient.Registry`, validated on construction.

    Values may be given as strings (as from the environment) or as Python values::

        Settings(maxsize=8, pool_timeout="0.5")
        Settings.from_env()            # POOLCLIENT_* variables, defaults for the rest
    """

    maxsize: int | None = _setting(
        "POOLCLIENT_MAXSIZE",
        None,
        optional_positive_int,
        "Most connections open at once to one origin (scheme, host, port, TLS settings). "
        "Unset: the worker's thread count under gunicorn's gthread worker, 1 under sync, "
        "10 elsewhere.",
    )
    pool_timeout: float = _setting(
        "POOLCLIENT_POOL_TIMEOUT",
        5.0,
        positive_seconds,
        "Seconds a caller waits for a connection when all of an origin's are in use; "
        "then the call fails with PoolTimeoutError (the example app answers 503).",
    )
    connect_timeout: float = _setting(
        "POOLCLIENT_CONNECT_TIMEOUT",
        5.0,
        positive_seconds,
        "Seconds to open a TCP connection and finish the TLS handshake.",
    )
    read_timeout: float = _setting(
        "POOLCLIENT_READ_TIMEOUT",
        15.0,
        positive_seconds,
        "Seconds to wait for each read from the upstream.",
    )
    ca_bundle: str | None = _setting(
        "POOLCLIENT_CA_BUNDLE",
        None,
        ca_bundle,
        "PEM file of CA certificates: the default trust. When set, a verified call that "
        "names no CA of its own trusts exactly these: .request(), requests' verify=True, "
        "a bundle inherited from REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE. A CA the caller "
        "names (verify='/path', ca_certs=, ca_cert_data=, an SSLContext) is honoured, in a "
        "pool of its own; verify=False still turns verification off.",
    )
    connect_retries: int = _setting(
        "POOLCLIENT_CONNECT_RETRIES",
        2,
        non_negative_int,
        "Times a call retries a connection that could not be opened, whatever the method "
        "(nothing was sent yet), with backoff (POOLCLIENT_BACKOFF).",
    )
    block: bool = _setting(
        "POOLCLIENT_BLOCK",
        True,
        boolean,
        "true: a caller waits for a free connection (bounded). false: urllib3's overflow, "
        "which opens extra connections and discards them afterwards (counted as discarded).",
    )
    max_hosts: int = _setting(
        "POOLCLIENT_MAX_HOSTS",
        100,
        positive_int,
        "Most origins with a pool in one process; the least recently used is dropped first.",
    )
    idle_timeout: float = _setting(
        "POOLCLIENT_IDLE_TIMEOUT",
        4.0,
        positive_seconds,
        "Seconds a pooled connection may sit idle and still be reused; older ones are closed "
        "and replaced (counted as expired). Keep it below the upstream's keep-alive timeout "
        "(Apache and Node.js 5 s, AWS load balancers 60 s, nginx 75 s).",
    )
    max_lifetime: float = _setting(
        "POOLCLIENT_MAX_LIFETIME",
        300.0,
        positive_seconds,
        "Seconds after which a connection is closed once its current request is done "
        "(counted as retired), so that DNS and load-balancer changes are followed.",
    )
    deadline: float = _setting(
        "POOLCLIENT_DEADLINE",
        20.0,
        positive_seconds,
        "Seconds one call may take until its response arrives: pool wait, connects, retries "
        "with their backoff, and reads. Each wait's timeout is cut to what is left when it starts. "
        "Keep it below gunicorn's --timeout (30 s), or a sync worker is killed, not answered.",
    )
    backoff: float = _setting(
        "POOLCLIENT_BACKOFF",
        0.1,
        non_negative_seconds,
        "Most seconds to wait before the first connect retry; each further retry up to twice "
        "as long, a random part of it (full jitter), never past the deadline. 0: no wait.",
    )
    stats_allow: str = _setting(
        "POOLCLIENT_STATS_ALLOW",
        PRIVATE_NETWORKS,
        networks,
        "Client networks that may read /health (and other stats endpoints): loopback, "
        "private networks and unix-socket callers (unix) by default. Behind a proxy every "
        "caller has the proxy's address: restrict the path there too. Empty: only callers "
        "with the token.",
    )
    stats_token: str | None = _setting(
        "POOLCLIENT_STATS_TOKEN",
        None,
        optional_secret,
        "When set, a request with 'Authorization: Bearer <token>' may read the stats "
        "endpoints from any address. Shown as *** wherever settings are shown.",
        secret=True,
    )

    origin_limits: str = _setting(
        "POOLCLIENT_ORIGIN_LIMITS",
        "",
        origin_limits,
        "Limits for particular origins, over POOLCLIENT_MAXSIZE and POOLCLIENT_POOL_TIMEOUT: "
        "entries 'https://host[:port] maxsize=N pool_timeout=S' separated by ';', such as "
        "a long-streaming API that needs more connections next to a fast one. Empty: the "
        "same limits for every origin.",
    )
    ready_urls: str = _setting(
        "POOLCLIENT_READY_URLS",
        "",
        urls,
        "Upstream URLs /readyz checks with a GET (through the pools); ready while each "
        "answers below 500 within POOLCLIENT_READY_TIMEOUT. Empty: ready whenever the "
        "process answers. Shown with passwords and query values masked.",
        shown=redact,
    )
    ready_cache: float = _setting(
        "POOLCLIENT_READY_CACHE",
        5.0,
        positive_seconds,
        "Seconds a /readyz result is reused, so frequent probes do not load the upstream.",
    )
    ready_timeout: float = _setting(
        "POOLCLIENT_READY_TIMEOUT",
        2.0,
        positive_seconds,
        "Seconds one round of /readyz checks may take in all; a probe that finds a round "
        "running waits at most this long, then answers the last result.",
    )
    serve_endpoints: bool = _setting(
        "POOLCLIENT_SERVE_ENDPOINTS",
        True,
        boolean,
        "true: the middleware answers /health, /metrics, /livez and /readyz itself. false: "
        "it answers none of them, so an app's own routes at those paths win.",
    )
    inherited: str = _setting(
        "POOLCLIENT_INHERITED",
        "warn",
        inherited_policy,
        "What a gunicorn worker does when it inherited TCP connections that no poolclient "
        "pool owns (a client made and used in the master before the fork, under "
        "--preload): warn names each one (WARNING on the poolclient logger, /health, "
        "/metrics); fail also stops the worker's boot, for CI.",
    )
    loop_calls: str = _setting(
        "POOLCLIENT_LOOP_CALLS",
        "warn",
        loop_calls_policy,
        "What a sync call through the pools (.request(), a .session(), a sync SDK client) "
        "does when made on the thread of a running asyncio event loop, where it stops "
        "every request of the worker, and under gunicorn's asgi worker its heartbeat, until "
        "it returns: warn names the call site once (WARNING on the poolclient logger) and "
        "the async way to make the call; error raises LoopBlockingError before anything is "
        "sent, for CI; off checks nothing. Calls from threads (Starlette's plain def "
        "endpoints, asyncio.to_thread) are never affected.",
    )
    server_timing: bool = _setting(
        "POOLCLIENT_SERVER_TIMING",
        False,
        boolean,
        "true: every response gets a Server-Timing header with the upstream calls the "
        "request made and their time (gunicorn's access log can show it with "
        "%({server-timing}o)s). The example gunicorn.conf.py turns it on.",
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            raw = getattr(self, spec.name)
            try:
                value = spec.metadata["validator"](raw)
            except ValueError as exc:
                shown = "***" if spec.metadata["secret"] else raw
                raise ConfigError(spec.metadata["env"], shown, str(exc)) from None
            object.__setattr__(self, spec.name, value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``POOLCLIENT_*`` variables; ``overrides`` win over them."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            env = spec.metadata["env"]
            if env in environ:
                values[spec.name] = environ[env]
        values.update(overrides)
        return cls(**values)

    def redacted(self) -> dict[str, object]:
        """The settings in force, by environment variable name, secrets as ``***``."""
        shown: dict[str, object] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata["secret"] and value is not None:
                value = "***"
            elif spec.metadata["shown"] is not None:
                value = spec.metadata["shown"](value)
            shown[spec.metadata["env"]] = value
        return shown

    @functools.cached_property
    def limits_by_origin(self) -> dict[OriginKey, dict[str, float]]:
        """``origin_limits`` parsed, once: {(scheme, host, port): {limit: value}}."""
        return _origin_limits(self.origin_limits)

    @functools.cached_property
    def stats_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``stats_allow`` parsed, once."""
        return tuple(ipaddress.ip_network(n) for n in self.stats_allow.split(",")
                     if n and n != UNIX)


def settings_table() -> str:
    """The settings as a Markdown table, generated from the same doc strings: these, then
    the origins' policy settings (:class:`poolclient.resilience.PolicySettings`)."""
    from .resilience.settings import PolicySettings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    specs = [*dataclasses.fields(Settings), *dataclasses.fields(PolicySettings)]
    for spec in specs:
        default = "unset" if spec.default in (None, "") else f"`{spec.default}`"
        rows.append(f"| `{spec.metadata['env']}` | {default} | {spec.metadata['doc']} |")
    return "\n".join(rows)
