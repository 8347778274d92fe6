"""The policy's settings: defaults valid, every bad value named by its variable, read from
the environment, each protection able to be turned off, and ready to merge into
config.Settings (same metadata, no variable used twice)."""

from __future__ import annotations

import dataclasses

import pytest

from poolclient import ConfigError, Settings
from poolclient.resilience import OriginPolicy, Outcome, PolicySettings
from tests.test_policy_breaker import Clock

FIELDS = {spec.metadata["env"]: spec for spec in dataclasses.fields(PolicySettings)}


def test_every_default_passes_its_own_validator_and_is_documented() -> None:
    for env, spec in FIELDS.items():
        assert env.startswith("POOLCLIENT_")
        assert spec.metadata["validator"](spec.default) == spec.default
        assert len(spec.metadata["doc"]) > 20
        assert set(spec.metadata) == {"env", "validator", "doc", "secret", "shown"}


def test_no_variable_is_already_a_setting() -> None:
    taken = {spec.metadata["env"] for spec in dataclasses.fields(Settings)}
    assert not taken & set(FIELDS)


@pytest.mark.parametrize(("name", "value"), [
    ("breaker", "maybe"),
    ("breaker_failures", 0),
    ("breaker_failures", True),
    ("breaker_failure_rate", 0),
    ("breaker_failure_rate", "1.5"),
    ("breaker_window", "-1"),
    ("breaker_min_calls", "ten"),
    ("breaker_open", 0),
    ("bulkhead_share", "0"),
    ("bulkhead_share", "nan"),
    ("retry_budget_ratio", -0.1),
    ("retry_budget_floor", "-1"),
    ("retry_budget_window", "inf"),
    ("stall_factor", 0.5),
    ("stall_floor", 0),
    ("stall_cap", 2),
    ("dns_refresh", ""),
    ("eject_failures", 1.5),
    ("eject_time", None),
    ("eject_max_share", True),
])
def test_a_bad_value_names_its_variable(name: str, value: object) -> None:
    env = next(spec.metadata["env"] for spec in dataclasses.fields(PolicySettings)
               if spec.name == name)
    with pytest.raises(ConfigError) as caught:
        PolicySettings(**{name: value})  # type: ignore[arg-type]
    assert caught.value.setting == env
    assert str(caught.value).startswith(f"{env}={value!r} is not valid: expected")


def test_open_max_below_open_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        PolicySettings(breaker_open=10, breaker_open_max=5)
    assert caught.value.setting == "POOLCLIENT_BREAKER_OPEN_MAX"
    assert "POOLCLIENT_BREAKER_OPEN" in str(caught.value)


def test_from_env_reads_the_variables_and_overrides_win() -> None:
    settings = PolicySettings.from_env(
        {"POOLCLIENT_BREAKER": "off", "POOLCLIENT_RETRY_BUDGET_RATIO": "0.1",
         "POOLCLIENT_STALL_FLOOR": " 3 ", "POOLCLIENT_MAXSIZE": "ignored here"},
        eject_failures="7")
    assert settings.breaker is False
    assert settings.retry_budget_ratio == 0.1
    assert settings.stall_floor == 3.0
    assert settings.eject_failures == 7
    with pytest.raises(ConfigError) as caught:
        PolicySettings.from_env({"POOLCLIENT_BULKHEAD_SHARE": "half"})
    assert caught.value.setting == "POOLCLIENT_BULKHEAD_SHARE"


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PolicySettings().breaker = False  # type: ignore[misc]


def test_everything_off_admits_every_call_and_counts_nothing() -> None:
    clock = Clock()
    policy = OriginPolicy("https://x:443", PolicySettings.off(), concurrency=1, clock=clock)
    calls = [policy.admit("GET /") for _ in range(20)]
    for call in calls:
        call.attempt()
        call.failed(Outcome.CONNECT_ERROR)
    clock.now += 1000
    assert policy.sweep() == [] and policy.candidates() == []
    snap = policy.snapshot()
    assert snap.breaker is None and snap.budget is None and snap.limit is None
    assert snap.in_flight == 20 and not snap.degraded
    assert repr(policy) == "<OriginPolicy https://x:443 [breaker off | in flight 20/1]>"
