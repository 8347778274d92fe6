"""Settings: defaults, the environment, validation, the printed table, and start-up checks.

A bad value must stop start-up with one line that names the variable, the value and what is
allowed: in code (``ConfigError``), in gunicorn's config (``SystemExit``) and in a real
gunicorn process (its output, no traceback).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys

import pytest

from poolclient import ConfigError, PoolClientError, Settings
from poolclient.gunicorn import check_settings
from poolclient.resilience.settings import PolicySettings
from tests.helpers import ROOT, Gunicorn, wait_for

FIELDS = {spec.metadata["env"]: spec for spec in dataclasses.fields(Settings)}
# The origins' policy settings are in the same table (resilience).
TABLE_FIELDS = {**FIELDS, **{spec.metadata["env"]: spec
                             for spec in dataclasses.fields(PolicySettings)}}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no POOLCLIENT_* variable in os.environ."""
    for name in list(os.environ):
        if name.startswith("POOLCLIENT_"):
            monkeypatch.delenv(name)


def env_without_poolclient(**extra: str) -> dict[str, str]:
    """os.environ without POOLCLIENT_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLCLIENT_")}
    env.update(extra)
    return env


def pem_file(directory, name: str = "ca.pem") -> str:
    """A PEM file holding one CA certificate."""
    import trustme

    path = os.path.join(str(directory), name)
    trustme.CA().cert_pem.write_to_path(path)
    return path


def assert_one_line_naming(message: str, env: str, value: object) -> None:
    """``message`` is one line naming ``env``, ``repr(value)`` and what is allowed."""
    assert "\n" not in message.strip(), message
    assert env in message, message
    assert repr(value) in message, message
    assert "expected" in message, message


# --- defaults --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", dataclasses.fields(Settings), ids=lambda s: s.name)
def test_default_passes_its_own_validator(spec: dataclasses.Field) -> None:
    """Each field's default is accepted, unchanged, by the validator in its metadata."""
    assert spec.metadata["validator"](spec.default) == spec.default


def test_every_field_declares_env_validator_and_doc() -> None:
    """Every field carries a POOLCLIENT_* variable, a validator and a non-empty doc string."""
    for spec in dataclasses.fields(Settings):
        assert spec.metadata["env"] == "POOLCLIENT_" + spec.name.upper()
        assert callable(spec.metadata["validator"])
        assert spec.metadata["doc"].strip()


def test_empty_environment_gives_the_defaults() -> None:
    """from_env with no POOLCLIENT_* variables equals Settings() and its declared defaults."""
    settings = Settings.from_env({})
    assert settings == Settings()
    for spec in dataclasses.fields(Settings):
        assert getattr(settings, spec.name) == spec.default


# --- reading the environment -----------------------------------------------------------

GOOD_ENV = [
    pytest.param("POOLCLIENT_MAXSIZE", "8", 8, id="maxsize"),
    pytest.param("POOLCLIENT_MAXSIZE", " 3 ", 3, id="maxsize-spaces"),
    pytest.param("POOLCLIENT_MAXSIZE", "", None, id="maxsize-empty-is-unset"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "0.25", 0.25, id="pool_timeout"),
    pytest.param("POOLCLIENT_CONNECT_TIMEOUT", "3", 3.0, id="connect_timeout"),
    pytest.param("POOLCLIENT_READ_TIMEOUT", "30.5", 30.5, id="read_timeout"),
    pytest.param("POOLCLIENT_CONNECT_RETRIES", "0", 0, id="connect_retries-zero"),
    pytest.param("POOLCLIENT_CONNECT_RETRIES", "5", 5, id="connect_retries"),
    pytest.param("POOLCLIENT_BLOCK", "false", False, id="block-false"),
    pytest.param("POOLCLIENT_BLOCK", "off", False, id="block-off"),
    pytest.param("POOLCLIENT_BLOCK", "0", False, id="block-0"),
    pytest.param("POOLCLIENT_BLOCK", "YES", True, id="block-YES"),
    pytest.param("POOLCLIENT_BLOCK", "1", True, id="block-1"),
    pytest.param("POOLCLIENT_MAX_HOSTS", "7", 7, id="max_hosts"),
    pytest.param("POOLCLIENT_CA_BUNDLE", "", None, id="ca_bundle-empty-is-unset"),
    pytest.param("POOLCLIENT_IDLE_TIMEOUT", "0.9", 0.9, id="idle_timeout"),
    pytest.param("POOLCLIENT_MAX_LIFETIME", "60", 60.0, id="max_lifetime"),
    pytest.param("POOLCLIENT_DEADLINE", "2.5", 2.5, id="deadline"),
    pytest.param("POOLCLIENT_BACKOFF", "0", 0.0, id="backoff-zero"),
    pytest.param("POOLCLIENT_STATS_ALLOW", " 10.1.2.3 , ::1,UNIX", "10.1.2.3/32,::1/128,unix",
                 id="stats_allow-normalised"),
    pytest.param("POOLCLIENT_STATS_ALLOW", "", "", id="stats_allow-empty-is-token-only"),
    pytest.param("POOLCLIENT_STATS_TOKEN", "s3cret-token-0123456789", "s3cret-token-0123456789",
                 id="stats_token"),
    pytest.param("POOLCLIENT_STATS_TOKEN", "", None, id="stats_token-empty-is-unset"),
    pytest.param("POOLCLIENT_READY_URLS", " https://a.internal/ready , http://b:8080/h",
                 "https://a.internal/ready,http://b:8080/h", id="ready_urls"),
    pytest.param("POOLCLIENT_READY_CACHE", "1.5", 1.5, id="ready_cache"),
    pytest.param("POOLCLIENT_READY_TIMEOUT", "0.5", 0.5, id="ready_timeout"),
    pytest.param("POOLCLIENT_SERVER_TIMING", "true", True, id="server_timing"),
    pytest.param("POOLCLIENT_INHERITED", " FAIL ", "fail", id="inherited"),
    pytest.param("POOLCLIENT_ORIGIN_LIMITS", "https://a.example maxsize=8",
                 "https://a.example:443 maxsize=8", id="origin_limits"),
    pytest.param("POOLCLIENT_SERVE_ENDPOINTS", "no", False, id="serve_endpoints"),
    pytest.param("POOLCLIENT_LOOP_CALLS", " Error ", "error", id="loop_calls"),
]


@pytest.mark.parametrize(("env", "raw", "expected"), GOOD_ENV)
def test_from_env_reads_each_variable(env: str, raw: str, expected: object) -> None:
    """Each POOLCLIENT_* variable sets its field to the parsed value, leaving others default."""
    settings = Settings.from_env({env: raw})
    name = FIELDS[env].name
    value = getattr(settings, name)
    assert value == expected
    assert type(value) is type(expected)
    others = {s.name: getattr(settings, s.name) for s in dataclasses.fields(Settings)
              if s.name != name}
    assert others == {s.name: s.default for s in dataclasses.fields(Settings) if s.name != name}


def test_good_env_table_covers_every_variable() -> None:
    """The table above exercises every POOLCLIENT_* variable Settings declares."""
    assert {p.values[0] for p in GOOD_ENV} == set(FIELDS)


def test_from_env_reads_ca_bundle_as_absolute_path(tmp_path, monkeypatch) -> None:
    """POOLCLIENT_CA_BUNDLE given relative to the working directory becomes an absolute path."""
    pem_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"POOLCLIENT_CA_BUNDLE": "ca.pem"})
    assert settings.ca_bundle == str(tmp_path / "ca.pem")


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, from_env reads os.environ."""
    monkeypatch.setenv("POOLCLIENT_MAXSIZE", "6")
    monkeypatch.setenv("POOLCLIENT_BLOCK", "no")
    settings = Settings.from_env()
    assert (settings.maxsize, settings.block) == (6, False)


def test_from_env_overrides_win_and_are_validated() -> None:
    """Keyword overrides replace the environment's value and are validated like it."""
    assert Settings.from_env({"POOLCLIENT_MAXSIZE": "6"}, maxsize=2).maxsize == 2
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POOLCLIENT_MAXSIZE": "6"}, maxsize=0)
    assert info.value.setting == "POOLCLIENT_MAXSIZE"


def test_from_env_ignores_unrelated_variables() -> None:
    """Variables that are not POOLCLIENT_* settings do not affect the result."""
    assert Settings.from_env({"MAXSIZE": "0", "POOLCLIENT": "x"}) == Settings()


def test_bad_token_is_named_but_never_echoed() -> None:
    """A too-short POOLCLIENT_STATS_TOKEN stops start-up naming the setting, not the value."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POOLCLIENT_STATS_TOKEN": "hunter2"})
    message = str(info.value)
    assert "POOLCLIENT_STATS_TOKEN" in message and "16 characters" in message
    assert "hunter2" not in message and "hunter2" not in repr(info.value.value)


def test_redacted_hides_the_token_and_parses_networks() -> None:
    """redacted() shows the token as ***; stats_networks parses POOLCLIENT_STATS_ALLOW once."""
    settings = Settings(stats_token="s3cret-token-0123456789", stats_allow="10.0.0.1,::1")
    assert settings.redacted()["POOLCLIENT_STATS_TOKEN"] == "***"
    assert "s3cret" not in repr(settings.redacted())
    assert [str(n) for n in settings.stats_networks] == ["10.0.0.1/32", "::1/128"]
    assert Settings().redacted()["POOLCLIENT_STATS_TOKEN"] is None
    assert "s3cret" not in repr(settings)
    shown = Settings(ready_urls="https://u:pw@a.internal/ready?key=k1").redacted()
    assert shown["POOLCLIENT_READY_URLS"] == "https://***@a.internal/ready?key=***"


def test_redacted_names_every_variable() -> None:
    """redacted() maps every POOLCLIENT_* variable to the value in force."""
    settings = Settings(maxsize=3, block=False)
    doc = settings.redacted()
    assert set(doc) == set(FIELDS)
    assert doc["POOLCLIENT_MAXSIZE"] == 3
    assert doc["POOLCLIENT_BLOCK"] is False


# --- bad values ------------------------------------------------------------------------

BAD_ENV = [
    pytest.param("POOLCLIENT_MAXSIZE", "abc", "at least 1", id="maxsize-abc"),
    pytest.param("POOLCLIENT_MAXSIZE", "0", "at least 1", id="maxsize-0"),
    pytest.param("POOLCLIENT_MAXSIZE", "-1", "at least 1", id="maxsize-negative"),
    pytest.param("POOLCLIENT_MAXSIZE", "true", "at least 1", id="maxsize-true"),
    pytest.param("POOLCLIENT_MAXSIZE", "1.5", "at least 1", id="maxsize-fraction"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "0", "greater than 0", id="pool_timeout-0"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "-2", "greater than 0", id="pool_timeout-negative"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "nan", "greater than 0", id="pool_timeout-nan"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "inf", "greater than 0", id="pool_timeout-inf"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "1e400", "greater than 0", id="pool_timeout-overflow"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "x", "greater than 0", id="pool_timeout-x"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "", "greater than 0", id="pool_timeout-empty"),
    pytest.param("POOLCLIENT_CONNECT_TIMEOUT", "0", "greater than 0", id="connect_timeout-0"),
    pytest.param("POOLCLIENT_READ_TIMEOUT", "soon", "greater than 0", id="read_timeout-word"),
    pytest.param("POOLCLIENT_CONNECT_RETRIES", "-1", "at least 0", id="connect_retries-negative"),
    pytest.param("POOLCLIENT_CONNECT_RETRIES", "two", "at least 0", id="connect_retries-word"),
    pytest.param("POOLCLIENT_BLOCK", "maybe", "true/false", id="block-maybe"),
    pytest.param("POOLCLIENT_BLOCK", "", "true/false", id="block-empty"),
    pytest.param("POOLCLIENT_MAX_HOSTS", "0", "at least 1", id="max_hosts-0"),
    pytest.param("POOLCLIENT_CA_BUNDLE", "/nonexistent/poolclient/ca.pem",
                 "No such file", id="ca_bundle-missing"),
    pytest.param("POOLCLIENT_IDLE_TIMEOUT", "0", "greater than 0", id="idle_timeout-0"),
    pytest.param("POOLCLIENT_MAX_LIFETIME", "-1", "greater than 0", id="max_lifetime-negative"),
    pytest.param("POOLCLIENT_DEADLINE", "never", "greater than 0", id="deadline-word"),
    pytest.param("POOLCLIENT_BACKOFF", "-0.1", "0 or more", id="backoff-negative"),
    pytest.param("POOLCLIENT_STATS_ALLOW", "10.0.0.0/8,intranet", "not an IP network",
                 id="stats_allow-name"),
    pytest.param("POOLCLIENT_STATS_ALLOW", "10.0.0.0/33", "not an IP network",
                 id="stats_allow-bad-prefix"),
    pytest.param("POOLCLIENT_READY_URLS", "a.internal/ready", "http:// or https://",
                 id="ready_urls-no-scheme"),
    pytest.param("POOLCLIENT_READY_CACHE", "0", "greater than 0", id="ready_cache-0"),
    pytest.param("POOLCLIENT_READY_TIMEOUT", "-1", "greater than 0", id="ready_timeout-neg"),
    pytest.param("POOLCLIENT_SERVER_TIMING", "sometimes", "true/false", id="server_timing-bad"),
    pytest.param("POOLCLIENT_INHERITED", "ignore", "warn or fail", id="inherited-bad"),
    pytest.param("POOLCLIENT_ORIGIN_LIMITS", "https://a.example maxsize=x", "maxsize",
                 id="origin_limits-bad"),
    pytest.param("POOLCLIENT_SERVE_ENDPOINTS", "2", "true/false", id="serve_endpoints-bad"),
    pytest.param("POOLCLIENT_LOOP_CALLS", "raise", "warn, error or off", id="loop_calls-bad"),
]


@pytest.mark.parametrize(("env", "raw", "hint"), BAD_ENV)
def test_bad_env_value_raises_one_line_config_error(env: str, raw: str, hint: str) -> None:
    """A bad POOLCLIENT_* value raises ConfigError: one line with variable, value, allowed."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({env: raw})
    err = info.value
    assert (err.setting, err.value) == (env, raw)
    message = str(err)
    assert_one_line_naming(message, env, raw)
    assert hint in message
    assert err.allowed in message


def test_bad_env_table_covers_every_variable() -> None:
    """Every POOLCLIENT_* variable has at least one bad value in the table above."""
    # The token's bad value is never echoed: test_bad_token_is_named_but_never_echoed.
    assert {p.values[0] for p in BAD_ENV} == set(FIELDS) - {"POOLCLIENT_STATS_TOKEN"}


def test_ca_bundle_without_certificate_is_rejected(tmp_path) -> None:
    """A CA bundle file that holds no certificate is named as holding none."""
    path = tmp_path / "empty.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POOLCLIENT_CA_BUNDLE": str(path)})
    assert_one_line_naming(str(info.value), "POOLCLIENT_CA_BUNDLE", str(path))
    assert "holds none" in str(info.value)


def test_ca_bundle_directory_is_rejected(tmp_path) -> None:
    """A directory given as the CA bundle is rejected with the OS's reason."""
    with pytest.raises(ConfigError) as info:
        Settings(ca_bundle=str(tmp_path))
    assert_one_line_naming(str(info.value), "POOLCLIENT_CA_BUNDLE", str(tmp_path))
    assert "directory" in str(info.value)


BAD_CODE = [
    pytest.param("maxsize", 0, id="maxsize-0"),
    pytest.param("maxsize", -1, id="maxsize-negative"),
    pytest.param("maxsize", True, id="maxsize-True"),
    pytest.param("maxsize", "true", id="maxsize-str-true"),
    pytest.param("maxsize", 2.5, id="maxsize-float"),
    pytest.param("maxsize", [4], id="maxsize-list"),
    pytest.param("pool_timeout", 0, id="pool_timeout-0"),
    pytest.param("pool_timeout", float("nan"), id="pool_timeout-nan"),
    pytest.param("pool_timeout", float("inf"), id="pool_timeout-inf"),
    pytest.param("pool_timeout", True, id="pool_timeout-True"),
    pytest.param("pool_timeout", None, id="pool_timeout-None"),
    pytest.param("connect_timeout", -0.5, id="connect_timeout-negative"),
    pytest.param("read_timeout", "x", id="read_timeout-x"),
    pytest.param("connect_retries", -1, id="connect_retries-negative"),
    pytest.param("connect_retries", False, id="connect_retries-False"),
    pytest.param("block", "maybe", id="block-maybe"),
    pytest.param("block", None, id="block-None"),
    pytest.param("max_hosts", 0, id="max_hosts-0"),
    pytest.param("ca_bundle", 42, id="ca_bundle-int"),
    pytest.param("ca_bundle", "/nonexistent/poolclient/ca.pem", id="ca_bundle-missing"),
]


@pytest.mark.parametrize(("name", "value"), BAD_CODE)
def test_settings_from_code_validate_too(name: str, value: object) -> None:
    """Settings(...) built in code rejects a bad value with the same one-line ConfigError."""
    with pytest.raises(ConfigError) as info:
        Settings(**{name: value})
    env = "POOLCLIENT_" + name.upper()
    assert info.value.setting == env
    assert_one_line_naming(str(info.value), env, value)


def test_settings_from_code_accept_python_values(tmp_path) -> None:
    """Python values (ints, floats, bools, path objects) are accepted and normalised."""
    ca = pem_file(tmp_path)
    from pathlib import Path

    settings = Settings(maxsize=2, pool_timeout=1, connect_timeout="0.5", read_timeout=2.5,
                        ca_bundle=Path(ca), connect_retries=0, block=False, max_hosts=3)
    assert settings.maxsize == 2
    assert settings.pool_timeout == 1.0 and isinstance(settings.pool_timeout, float)
    assert settings.connect_timeout == 0.5
    assert settings.ca_bundle == ca and isinstance(settings.ca_bundle, str)
    assert (settings.connect_retries, settings.block, settings.max_hosts) == (0, False, 3)


def test_block_from_code_accepts_the_1_and_0_its_message_allows() -> None:
    """Settings(block=1/0) from code means what POOLCLIENT_BLOCK=1/0 means."""
    assert Settings(block=1).block is True
    assert Settings(block=0).block is False


def test_settings_are_frozen() -> None:
    """Validated settings cannot be changed afterwards (no way around validation)."""
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.maxsize = 0  # type: ignore[misc]


def test_config_error_types_and_pickling() -> None:
    """ConfigError is a ValueError and PoolClientError and survives pickling (worker -> master)."""
    err = ConfigError("POOLCLIENT_MAXSIZE", "abc", "expected an integer of at least 1")
    assert isinstance(err, ValueError) and isinstance(err, PoolClientError)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) == (
        "POOLCLIENT_MAXSIZE='abc' is not valid: expected an integer of at least 1")
    assert (copy.setting, copy.value, copy.allowed) == (err.setting, err.value, err.allowed)


# --- python -m poolclient(.config) -----------------------------------------------------


@pytest.mark.parametrize("module", [pytest.param("poolclient", id="python-m-poolclient")])
def test_module_prints_a_table_of_every_variable(module: str) -> None:
    """`python -m <module>` prints a Markdown table with one row per variable, and no warning."""
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env=env_without_poolclient(),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {result.stderr}"
    assert lines[0] == "| variable | default | meaning |"
    rows = {line.split("`")[1]: line for line in lines[2:]}
    assert set(rows) == set(TABLE_FIELDS)
    assert len(lines) == 2 + len(TABLE_FIELDS)
    assert "| unset |" in rows["POOLCLIENT_MAXSIZE"]
    assert "`5.0`" in rows["POOLCLIENT_POOL_TIMEOUT"]
    for env, spec in TABLE_FIELDS.items():
        assert spec.metadata["doc"] in rows[env]
    assert result.stderr == ""


# --- start-up checks -------------------------------------------------------------------


def test_check_settings_returns_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_settings() returns the environment's settings when they are good."""
    monkeypatch.setenv("POOLCLIENT_MAXSIZE", "5")
    assert check_settings().maxsize == 5


@pytest.mark.parametrize(("env", "raw"), [
    pytest.param("POOLCLIENT_MAXSIZE", "zero", id="maxsize"),
    pytest.param("POOLCLIENT_POOL_TIMEOUT", "nan", id="pool_timeout"),
    pytest.param("POOLCLIENT_BLOCK", "maybe", id="block"),
    pytest.param("POOLCLIENT_BREAKER_FAILURES", "0", id="breaker_failures"),
    pytest.param("POOLCLIENT_BULKHEAD_SHARE", "2", id="bulkhead_share"),
])
def test_check_settings_exits_with_one_line(monkeypatch, env: str, raw: str) -> None:
    """check_settings() raises SystemExit with one line naming the bad setting and value."""
    monkeypatch.setenv(env, raw)
    with pytest.raises(SystemExit) as info:
        check_settings()
    message = info.value.code
    assert isinstance(message, str)  # a string code: printed to stderr, exit status 1
    assert message.startswith("poolclient: ")
    assert_one_line_naming(message, env, raw)


def assert_gunicorn_output_names(output: str, env: str, raw: str) -> None:
    """One line of gunicorn's output names the variable and the value; no traceback."""
    assert "Traceback" not in output, output
    assert any(env in line and repr(raw) in line for line in output.splitlines()), output


def test_gunicorn_check_config_rejects_bad_setting() -> None:
    """`gunicorn -c gunicorn.conf.py --check-config` with POOLCLIENT_MAXSIZE=zero exits non-zero."""
    env = env_without_poolclient(POOLCLIENT_MAXSIZE="zero", UPSTREAM_URL="https://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--check-config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert_gunicorn_output_names(output, "POOLCLIENT_MAXSIZE", "zero")


def test_gunicorn_check_config_accepts_good_settings() -> None:
    """The same --check-config run with valid settings exits 0 (the control for the test above)."""
    env = env_without_poolclient(POOLCLIENT_MAXSIZE="3", UPSTREAM_URL="https://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--check-config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("env", "raw"), [
    pytest.param("POOLCLIENT_MAXSIZE", "zero", id="maxsize"),
    pytest.param("POOLCLIENT_CA_BUNDLE", "/nonexistent/poolclient/ca.pem", id="ca_bundle"),
])
def test_gunicorn_start_stops_on_bad_setting(tmp_path, monkeypatch, env: str, raw: str) -> None:
    """A real gunicorn started with a bad POOLCLIENT_* value exits non-zero, naming it in a line."""
    monkeypatch.setenv("UPSTREAM_URL", "https://127.0.0.1:9")
    server = Gunicorn(["-w", "1"], {env: raw}, str(tmp_path / "gunicorn.log"))
    try:
        wait_for(lambda: server.proc.poll() is not None, 30, "gunicorn to exit")
        output = server.log()
        assert server.proc.returncode != 0, output
        assert "Booting worker" not in output
        assert_gunicorn_output_names(output, env, raw)
    finally:
        server.stop()
