"""The settings this branch adds: log format, shutdown timeout and the OTLP endpoint."""

from __future__ import annotations

import pytest

from gateway.cli import settings_environment
from gateway.config import SettingsError, load_settings


def test_the_otlp_endpoint_comes_from_the_standard_variable() -> None:
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})

    assert str(settings.otlp_endpoint) == "http://collector:4318/"
    assert load_settings({"GATEWAY_OTLP_ENDPOINT": "http://x:4318"}).otlp_endpoint is None
    assert load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}).otlp_endpoint is None


def test_settings_travel_to_workers_under_their_own_names() -> None:
    traced = settings_environment(load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}))
    untraced = settings_environment(load_settings({}))

    assert traced["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://c:4318/"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in untraced
    assert untraced["GATEWAY_SHUTDOWN_TIMEOUT"] == "30"
    assert load_settings(traced) == load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})


def test_resource_attributes_travel_to_workers_unchanged() -> None:
    attributes = {"OTEL_RESOURCE_ATTRIBUTES": "team=calls%2Cvoice,region=eu=west"}
    settings = load_settings(attributes)

    assert settings.otel_resource_attributes == {"team": "calls,voice", "region": "eu=west"}
    assert load_settings(settings_environment(settings)) == settings


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GATEWAY_LOG_FORMAT": "xml"}, "GATEWAY_LOG_FORMAT: Input should be 'auto', 'json'"),
        ({"GATEWAY_SHUTDOWN_TIMEOUT": "0"}, "GATEWAY_SHUTDOWN_TIMEOUT: Input should be greater"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT: Input"),
    ],
    ids=["log-format", "shutdown-timeout", "otlp-endpoint"],
)
def test_bad_values_name_their_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)

    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        pytest.param({}, "catapult-gateway", id="default-the-apps-name"),
        pytest.param({"OTEL_SERVICE_NAME": "gw-eu"}, "gw-eu", id="standard-variable"),
        pytest.param({"OTEL_SERVICE_NAME": ""}, "catapult-gateway", id="empty-is-unset"),
        pytest.param({"GATEWAY_OTEL_SERVICE_NAME": "gw-eu"}, "catapult-gateway", id="no-prefix"),
    ],
)
def test_the_service_name_comes_from_the_standard_variable(
    environ: dict[str, str], name: str
) -> None:
    assert load_settings(environ).otel_service_name == name


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("no-equals-sign", id="no-equals"),
        pytest.param("=value", id="empty-key"),
        pytest.param("k=" + "v" * 5000, id="too-long"),
    ],
)
def test_unreadable_resource_attributes_stop_start_up(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"OTEL_RESOURCE_ATTRIBUTES": value})
    assert str(caught.value).startswith("OTEL_RESOURCE_ATTRIBUTES")
