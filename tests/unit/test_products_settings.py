"""Product names (`ukcancel.products`) and the environment settings (`ukcancel.settings`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ukcancel import products
from ukcancel.products import LONG_TO_SHORT, SHORT_TO_LONG, UnknownProduct, long_name, normalise, short_names
from ukcancel.settings import PRODUCTION_BASE_URL, SECRET_VARIABLES, Settings, SettingsError

# ---- products ---------------------------------------------------------------------------------

TABLE = [
    ("LightCurve", "lc"),
    ("Spectrum", "spec"),
    ("StandardPos", "psf"),
    ("EnhancedPos", "enh"),
    ("AstromPos", "xastrom"),
    ("Image", "image"),
    ("SourceDet", "sourceDet"),
]


def test_the_product_table_is_the_documented_one_in_the_official_order() -> None:
    assert list(LONG_TO_SHORT.items()) == TABLE
    assert SHORT_TO_LONG == {short: long for long, short in TABLE}


@pytest.mark.parametrize(("long", "short"), TABLE)
def test_long_and_short_names_both_give_the_long_name(long: str, short: str) -> None:
    assert long_name(long) == long
    assert long_name(short) == long
    assert short_names([long]) == [short]


def test_normalise_collapses_duplicates_and_mixed_forms_into_canonical_order() -> None:
    assert normalise(["psf", "LightCurve", "lc", "StandardPos", "lc"]) == ["LightCurve", "StandardPos"]
    assert normalise(["sourceDet", "Image", "xastrom"]) == ["AstromPos", "Image", "SourceDet"]


@pytest.mark.parametrize("name", ["LC", "lightcurve", "Lightcurve", "all", "", " lc", "spectrum", "psf,lc"])
def test_unknown_names_are_refused_with_the_name_and_the_choices(name: str) -> None:
    with pytest.raises(UnknownProduct) as caught:
        normalise(["lc", name])
    assert caught.value.name == name
    assert repr(name) in str(caught.value)
    assert "LightCurve" in str(caught.value) and "sourceDet" in str(caught.value)


def test_unknown_product_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        long_name("bogus")


@given(st.lists(st.sampled_from([name for pair in TABLE for name in pair]), min_size=1, max_size=20))
def test_normalise_is_idempotent_ordered_and_loses_no_product(names: list[str]) -> None:
    result = normalise(names)
    assert result == normalise(result)
    assert len(result) == len(set(result))
    assert result == [long for long in LONG_TO_SHORT if long in result]
    assert set(result) == {long_name(n) for n in names}
    assert products.ALL == "all"


# ---- settings -----------------------------------------------------------------------------------


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url is None and settings.embedded
    assert settings.effective_broker_url == "memory://"
    assert settings.ukssdc_base_url == PRODUCTION_BASE_URL == "https://www.swift.ac.uk/user_objects"
    assert settings.ukssdc_api_version == "1.12"
    assert settings.max_attempts == 8
    assert settings.max_wait_seconds == 60
    assert settings.retry_base_seconds <= settings.retry_max_delay_seconds
    assert settings.broker_visibility_timeout_seconds > settings.retry_max_delay_seconds


def test_blank_values_mean_the_default() -> None:
    assert Settings.from_env({"UKCANCEL_MAX_ATTEMPTS": "   ", "REDIS_URL": ""}) == Settings()


def test_values_are_read_and_parsed() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:6379/3",
            "UKSSDC_BASE_URL": "http://127.0.0.1:8090/",
            "UKCANCEL_MAX_ATTEMPTS": "3",
            "UKCANCEL_RETRY_BASE_SECONDS": "0.05",
            "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "0.5",
            "UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS": "3",
            "UKCANCEL_CALLBACK_ALLOWED_HOSTS": " Example.org, hooks.example.org:8443 ,",
            "UKCANCEL_API_RATE_LIMIT": "10 per second",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:6379/3" and not settings.embedded
    assert settings.effective_broker_url == "redis://127.0.0.1:6379/3"  # the broker defaults to Redis
    assert settings.ukssdc_base_url == "http://127.0.0.1:8090"  # trailing slash dropped
    assert settings.max_attempts == 3
    assert settings.retry_base_seconds == 0.05 and settings.retry_max_delay_seconds == 0.5
    assert settings.broker_visibility_timeout_seconds == 3
    assert settings.callback_allowed_hosts == ("example.org", "hooks.example.org:8443")
    assert settings.api_rate_limit == "10 per second"


def test_a_broker_url_overrides_the_redis_default() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:6379/3", "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    )
    assert settings.effective_broker_url == "amqp://guest:guest@127.0.0.1:5672//"


def test_every_setting_has_a_variable_and_every_variable_a_field() -> None:
    fields = {f for f in Settings.__dataclass_fields__ if f != "ENVIRONMENT"}
    mapped = [name for _, name, _ in Settings().ENVIRONMENT]
    assert set(mapped) == fields
    assert len(mapped) == len(set(mapped))


BAD_VALUES = {
    "_positive_int": ["0", "-3", "1.5", "many", "1e3"],
    "_positive_float": ["0", "-0.5", "inf", "nan", "soon"],
    "_non_negative_float": ["-0.5", "inf", "nan", "soon"],
    "_directory": ["/nonexistent/ukcancel-test-dir"],
    "_http_url": ["ftp://example.org", "localhost:8000", "www.swift.ac.uk/user_objects", "http://"],
    "_redis_url": ["http://127.0.0.1:6379", "127.0.0.1:6379", "amqp://guest@localhost//"],
    "_broker_url": ["localhost", "just words"],
    "_rate_limit": ["lots", "10 per fortnight", "-1 per minute"],
    "_host_list": ["example.org/path", "a.example.org, b example.org"],
    "_secret": ["short", "x" * 31],
    "_port": ["0", "65536", "-1", "http", "9101.5"],
    "_log_format": ["JSON", "logfmt", "yes"],
    "_fleet_rate": ["0", "-1", "0.0009", "1e-9", "inf", "nan", "fast"],
    "_sentinels": ["sentinel-a", "sentinel-a:port", "sentinel-a:0", "sentinel-a:70000", ":26379"],
    "_non_negative_int": ["-1", "1.5", "many"],
    "_flag": ["maybe", "2", "enabled"],
    "_address": ["localhost", "0.0.0.0.0", "::g"],
    "_pipeline_names": ["Nightly", "a b", "x/y", "-lead"],
}
CASES = [
    (variable, raw)
    for variable, _, parse in Settings().ENVIRONMENT
    for raw in BAD_VALUES.get(getattr(parse, "__name__", ""), [])
]


def test_every_validated_variable_has_bad_values_to_try() -> None:
    validated = {v for v, _, parse in Settings().ENVIRONMENT if parse is not str}
    assert {v for v, _ in CASES} == validated
    assert "UKCANCEL_UKSSDC_API_VERSION" not in validated  # any text is a version string


@pytest.mark.parametrize(("variable", "raw"), CASES)
def test_a_bad_value_is_refused_naming_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: raw})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    if variable in SECRET_VARIABLES:
        assert raw.strip() not in message  # a secret's value is never echoed
    else:
        assert repr(raw.strip()) in message


def test_retry_base_above_the_cap_is_refused_naming_both() -> None:
    with pytest.raises(SettingsError, match="UKCANCEL_RETRY_BASE_SECONDS.*UKCANCEL_RETRY_MAX_DELAY_SECONDS"):
        Settings.from_env({"UKCANCEL_RETRY_BASE_SECONDS": "10", "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "5"})


@pytest.mark.parametrize("visibility", ["5", "4"])
def test_a_visibility_timeout_not_above_the_longest_retry_delay_is_refused(visibility: str) -> None:
    env = {
        "UKCANCEL_RETRY_BASE_SECONDS": "1",
        "UKCANCEL_RETRY_MAX_DELAY_SECONDS": "5",
        "UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS": visibility,
    }
    with pytest.raises(SettingsError, match="UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS"):
        Settings.from_env(env)
    env["UKCANCEL_BROKER_VISIBILITY_TIMEOUT_SECONDS"] = "6"
    assert Settings.from_env(env).broker_visibility_timeout_seconds == 6


def test_replace_returns_a_changed_copy() -> None:
    settings = Settings()
    changed = settings.replace(max_attempts=2)
    assert changed.max_attempts == 2 and settings.max_attempts == 8
