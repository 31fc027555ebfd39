"""Settings from an injected environment: defaults, every variable, one-line errors."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import (
    DEFAULT_UPSTREAM_URL,
    Settings,
    SettingsError,
    load_settings,
    unknown_variables,
)

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "workers": 1,
    "upstream_url": DEFAULT_UPSTREAM_URL + "/",
    "upstream_timeout": 10.0,
    "upstream_connect_timeout": 3.0,
    "upstream_max_connections": 32,
    "upstream_retries": 2,
    "request_timeout": 25.0,
    "cache_url": "memory://",
    "cache_ttl": 5.0,
    "log_level": "info",
    "sandbox": False,
}


def test_defaults() -> None:
    settings = load_settings({}).model_dump(mode="json")

    # Settings that later issues add are pinned by their own tests.
    assert {name: settings[name] for name in DEFAULTS} == DEFAULTS
    assert load_settings({}).upstream_base == DEFAULT_UPSTREAM_URL


VARIABLES = [
    pytest.param("GATEWAY_HOST", "::1", "host", "::1", id="host"),
    pytest.param("GATEWAY_PORT", "9000", "port", 9000, id="port"),
    pytest.param("GATEWAY_WORKERS", "4", "workers", 4, id="workers"),
    pytest.param(
        "GATEWAY_UPSTREAM_URL", "http://127.0.0.1:8001", "upstream_base",
        "http://127.0.0.1:8001", id="upstream-url",
    ),
    pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "2.5", "upstream_timeout", 2.5, id="upstream-timeout"),
    pytest.param(
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "1", "upstream_connect_timeout", 1.0,
        id="upstream-connect-timeout",
    ),
    pytest.param(
        "GATEWAY_UPSTREAM_MAX_CONNECTIONS", "8", "upstream_max_connections", 8,
        id="upstream-max-connections",
    ),
    pytest.param("GATEWAY_UPSTREAM_RETRIES", "0", "upstream_retries", 0, id="upstream-retries"),
    pytest.param("GATEWAY_REQUEST_TIMEOUT", "60", "request_timeout", 60.0, id="request-timeout"),
    pytest.param(
        "GATEWAY_CACHE_URL", "redis://localhost:6379/0", "cache_url",
        "redis://localhost:6379/0", id="cache-url",
    ),
    pytest.param("GATEWAY_CACHE_TTL", "0", "cache_ttl", 0.0, id="cache-ttl-off"),
    pytest.param("GATEWAY_LOG_LEVEL", "debug", "log_level", "debug", id="log-level"),
    pytest.param("GATEWAY_SANDBOX", "true", "sandbox", True, id="sandbox"),
    pytest.param("gateway_port", "9001", "port", 9001, id="lower-case-name"),
]  # fmt: skip


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), VARIABLES)
def test_every_variable_maps_to_its_setting(
    variable: str, value: str, attribute: str, expected: Any
) -> None:
    assert getattr(load_settings({variable: value}), attribute) == expected


def test_every_setting_has_a_variable_and_a_description() -> None:
    mapped = {param.values[2] for param in VARIABLES} | {"upstream_url"}

    assert set(DEFAULTS) <= mapped
    for name, field in Settings.model_fields.items():
        assert field.description, name


BAD_VALUES = [
    pytest.param("GATEWAY_PORT", "eighty", id="port-not-a-number"),
    pytest.param("GATEWAY_PORT", "70000", id="port-too-high"),
    pytest.param("GATEWAY_WORKERS", "0", id="workers-zero"),
    pytest.param("GATEWAY_UPSTREAM_URL", "not a url", id="upstream-url"),
    pytest.param("GATEWAY_UPSTREAM_URL", "ftp://example.com", id="upstream-url-scheme"),
    pytest.param("GATEWAY_UPSTREAM_URL", "https://u:p@example.com", id="upstream-url-creds"),
    pytest.param("GATEWAY_UPSTREAM_URL", "https://example.com/?a=1", id="upstream-url-query"),
    pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "0", id="upstream-timeout-zero"),
    pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "soon", id="upstream-timeout-words"),
    pytest.param("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "-1", id="connect-timeout-negative"),
    pytest.param("GATEWAY_UPSTREAM_MAX_CONNECTIONS", "0", id="max-connections-zero"),
    pytest.param("GATEWAY_UPSTREAM_RETRIES", "9", id="retries-too-many"),
    pytest.param("GATEWAY_REQUEST_TIMEOUT", "-3", id="request-timeout-negative"),
    pytest.param("GATEWAY_CACHE_URL", "memcached://x", id="cache-url-scheme"),
    pytest.param("GATEWAY_CACHE_TTL", "-1", id="cache-ttl-negative"),
    pytest.param("GATEWAY_LOG_LEVEL", "loud", id="log-level"),
    pytest.param("GATEWAY_SANDBOX", "maybe", id="sandbox"),
    # Non-finite and absurd numbers: `inf` made /readyz answer 500 and GATEWAY_CACHE_TTL
    # crash start-up with an OverflowError traceback; the others were accepted.
    pytest.param("GATEWAY_UPSTREAM_RATE", "inf", id="upstream-rate-inf"),
    pytest.param("GATEWAY_UPSTREAM_RATE", "nan", id="upstream-rate-nan"),
    pytest.param("GATEWAY_UPSTREAM_RATE", "1e9", id="upstream-rate-huge"),
    pytest.param("GATEWAY_CACHE_TTL", "inf", id="cache-ttl-inf"),
    pytest.param("GATEWAY_CACHE_TTL", "86401", id="cache-ttl-over-a-day"),
    pytest.param("GATEWAY_CACHE_TIMEOUT", "inf", id="cache-timeout-inf"),
    pytest.param("GATEWAY_UPSTREAM_QUEUE_TIMEOUT", "inf", id="queue-timeout-inf"),
    pytest.param("GATEWAY_UPSTREAM_QUEUE_TIMEOUT", "nan", id="queue-timeout-nan"),
    pytest.param("GATEWAY_REQUEST_TIMEOUT", "1e308", id="request-timeout-1e308"),
    pytest.param("GATEWAY_REQUEST_TIMEOUT", "3601", id="request-timeout-over-an-hour"),
    pytest.param("GATEWAY_UPSTREAM_TIMEOUT", "inf", id="upstream-timeout-inf"),
    pytest.param("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "nan", id="connect-timeout-nan"),
    pytest.param("GATEWAY_HEADER_TIMEOUT", "inf", id="header-timeout-inf"),
    pytest.param("GATEWAY_BODY_TIMEOUT", "-inf", id="body-timeout-minus-inf"),
    pytest.param("GATEWAY_KEEPALIVE_TIMEOUT", "1e308", id="keepalive-timeout-1e308"),
    pytest.param("GATEWAY_CACHE_MAX_ENTRIES", "1" + "0" * 30, id="cache-max-entries-huge"),
    pytest.param("GATEWAY_CACHE_MAX_BYTES", "1" + "0" * 30, id="cache-max-bytes-huge"),
    pytest.param("GATEWAY_RESPONSE_CACHE_MAX_ENTRIES", "1e30", id="answer-cache-entries"),
    pytest.param("GATEWAY_RESPONSE_CACHE_MAX_BYTES", "1" + "0" * 30, id="answer-cache-bytes"),
    pytest.param("GATEWAY_RESPONSE_CACHE_MAX_ANSWER_BYTES", "1" + "0" * 12, id="answer-bytes"),
    pytest.param("GATEWAY_UPSTREAM_MAX_BODY_BYTES", "1" + "0" * 30, id="upstream-body-huge"),
    pytest.param("GATEWAY_MAX_BODY_BYTES", "1" + "0" * 30, id="max-body-huge"),
    # An empty host made uvicorn listen on every interface.
    pytest.param("GATEWAY_HOST", "", id="host-empty"),
    pytest.param("GATEWAY_HOST", "   ", id="host-blank"),
    pytest.param("GATEWAY_HOST", " 127.0.0.1", id="host-padded"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_setting(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: value})

    message = str(raised.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message
    assert raised.value.__cause__ is None  # no pydantic traceback chained on
    assert raised.value.__suppress_context__


def test_every_float_setting_refuses_non_finite_numbers() -> None:
    # The table above names the known ones; this catches a float setting added later.
    floats = [name for name, field in Settings.model_fields.items() if field.annotation is float]
    assert "cache_ttl" in floats
    assert "upstream_rate" in floats
    for name in floats:
        for value in ("inf", "-inf", "nan", "1e308"):
            with pytest.raises(SettingsError, match=f"^GATEWAY_{name.upper()}:"):
                load_settings({f"GATEWAY_{name.upper()}": value})


def test_every_numeric_setting_has_an_upper_bound() -> None:
    unbounded = [
        name
        for name, field in Settings.model_fields.items()
        if field.annotation in (int, float)
        and not any(getattr(rule, "le", None) is not None for rule in field.metadata)
        and not any(getattr(rule, "lt", None) is not None for rule in field.metadata)
    ]

    assert unbounded == []


SECRET_SETTINGS = ["GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY"]
BAD_SECRETS = [
    pytest.param("q", "at least 16 characters", id="one-character"),
    pytest.param("fifteen-chars-x", "at least 16 characters", id="fifteen"),
    pytest.param(" " * 20, "whitespace", id="spaces-only"),
    pytest.param("\t" * 20, "whitespace", id="tabs-only"),
    pytest.param(" 0123456789abcdef0123", "whitespace", id="leading-space"),
    pytest.param("0123456789abcdef0123\n", "whitespace", id="trailing-newline"),
    pytest.param("replace-me-with-openssl-rand-hex-32", "placeholder", id="replace-me"),
    pytest.param("REPLACE-ME-please-0123456789", "placeholder", id="replace-me-upper"),
    pytest.param("changeme-changeme-changeme", "placeholder", id="changeme"),
]


@pytest.mark.parametrize("variable", SECRET_SETTINGS)
@pytest.mark.parametrize(("value", "reason"), BAD_SECRETS)
def test_a_weak_secret_is_refused_without_echoing_it(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: value})

    message = str(raised.value)
    assert message.startswith(f"{variable}: ")
    assert reason in message
    assert "\n" not in message
    assert not value.strip() or value.strip() not in message
    assert "(got" not in message


@pytest.mark.parametrize("variable", SECRET_SETTINGS)
def test_a_good_secret_is_accepted(variable: str) -> None:
    settings = load_settings({variable: "0123456789abcdef"})

    secret = getattr(settings, variable.removeprefix("GATEWAY_").lower())
    assert secret.get_secret_value() == "0123456789abcdef"


def test_a_redis_url_error_does_not_echo_its_password() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"GATEWAY_CACHE_URL": "redis://:hunter2-secret@host:6379/x"})

    assert "hunter2-secret" not in str(raised.value)


def test_sandbox_refuses_port_0() -> None:
    # Before: the banner said port 0 and the in-process sandbox was called at port 0,
    # so every query failed with UPSTREAM_UNAVAILABLE while /readyz said ready.
    with pytest.raises(SettingsError) as raised:
        load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": "0"})

    assert str(raised.value).startswith("GATEWAY_PORT (--port) must not be 0 with")
    assert load_settings({"GATEWAY_PORT": "0"}).port == 0  # without the sandbox: fine


@pytest.mark.parametrize(
    ("upstream", "request_"),
    [("10", "10"), ("30", "25"), ("5", "4.9")],
    ids=["equal", "longer", "just-longer"],
)
def test_the_upstream_timeout_must_fit_the_request_deadline(upstream: str, request_: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"GATEWAY_UPSTREAM_TIMEOUT": upstream, "GATEWAY_REQUEST_TIMEOUT": request_})

    message = str(raised.value)
    assert "GATEWAY_UPSTREAM_TIMEOUT" in message
    assert "GATEWAY_REQUEST_TIMEOUT" in message
    assert "\n" not in message


def test_overrides_win_and_none_overrides_are_ignored() -> None:
    settings = load_settings({"GATEWAY_PORT": "9000", "GATEWAY_HOST": "::1"}, port=9100, host=None)

    assert (settings.port, settings.host) == (9100, "::1")


def test_other_variables_are_ignored() -> None:
    settings = load_settings({"GATEWAY_TEST_SOMETHING": "x", "PORT": "1", "HOST": "x"})

    assert settings == load_settings({})


UNKNOWN_VARIABLES = [
    pytest.param(
        {"GATEWAY_CACHE_TLL": "3"},
        ["GATEWAY_CACHE_TLL is not a setting and is ignored; did you mean GATEWAY_CACHE_TTL?"],
        id="transposed",
    ),
    pytest.param(
        {"GATEWAY_UPSTREM_URL": "http://x"},
        ["GATEWAY_UPSTREM_URL is not a setting and is ignored; did you mean GATEWAY_UPSTREAM_URL?"],
        id="missing-letter",
    ),
    pytest.param(
        {"gateway_cors_origin": "https://a.example"},
        ["gateway_cors_origin is not a setting and is ignored; did you mean GATEWAY_CORS_ORIGINS?"],
        id="lower-case",
    ),
    pytest.param(
        {"GATEWAY_XYZZY": "1"}, ["GATEWAY_XYZZY is not a setting and is ignored"], id="no-hint"
    ),
    pytest.param({"GATEWAY_TEST_REQUIRE_NODE": "1"}, [], id="test-suite-switch"),
    pytest.param({"GATEWAY_SANDBOX_PORT": "8001"}, [], id="sandbox-command"),
    pytest.param({"GATEWAY_CACHE_TTL": "3", "gateway_port": "1", "PATH": "/bin"}, [], id="known"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, [], id="standard-name"),
]


@pytest.mark.parametrize(("environ", "expected"), UNKNOWN_VARIABLES)
def test_unknown_gateway_variables_are_named_with_the_closest_setting(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert unknown_variables(environ, ["GATEWAY_SANDBOX_PORT"]) == expected


def test_settings_are_frozen() -> None:
    settings = load_settings({})

    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("HTTPS://APP.Example.COM", "https://app.example.com", id="upper-case"),
        pytest.param("https://app.example.com:443", "https://app.example.com", id="default-port"),
        pytest.param("http://app.example.com:80", "http://app.example.com", id="default-http"),
        pytest.param("http://localhost:5173", "http://localhost:5173", id="other-port"),
        pytest.param("http://[::1]:3000", "http://[::1]:3000", id="ipv6"),
    ],
)
def test_cors_origins_are_kept_as_browsers_send_them(given: str, expected: str) -> None:
    # Browsers send Origin serialised (RFC 6454); an allow-list entry spelt otherwise
    # would start fine and then never match.
    assert load_settings({"GATEWAY_CORS_ORIGINS": given}).cors_origins == (expected,)


@pytest.mark.parametrize(
    "given",
    ["https://user@app.example.com", "https://app.example.com?x=1", "https://app.example.com:x"],
)
def test_cors_origins_that_are_no_origin_are_refused(given: str) -> None:
    with pytest.raises(SettingsError, match="GATEWAY_CORS_ORIGINS"):
        load_settings({"GATEWAY_CORS_ORIGINS": given})


@pytest.mark.parametrize(
    "where",
    [
        "a-directory",
        "missing-directory",
        "blank",
        "a-link",
        "others-may-write",
        "group-may-write",
        "a-fifo",
        "another-file",
    ],
    ids=lambda where: where,
)
def test_an_unusable_pacing_file_stops_start_up(tmp_path: Any, where: str) -> None:
    (tmp_path / "target").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    # Files the pacer's own check (`pacing_file.unfit`) refuses at the first request,
    # after which every worker paces alone: N workers, N requests a second, upstream 429s.
    (tmp_path / "planted").write_text("{}")
    (tmp_path / "planted").chmod(0o666)
    (tmp_path / "shared").write_text("{}")
    (tmp_path / "shared").chmod(0o620)
    os.mkfifo(tmp_path / "fifo", 0o600)
    # A private file that holds something else: the first reservation would overwrite it.
    (tmp_path / "passwd").write_text("root:x:0:0:keep me\n")
    (tmp_path / "passwd").chmod(0o600)
    value = {
        "a-directory": str(tmp_path),
        "missing-directory": str(tmp_path / "gone" / "pacing"),
        "blank": " ",
        "a-link": str(tmp_path / "link"),
        "others-may-write": str(tmp_path / "planted"),
        "group-may-write": str(tmp_path / "shared"),
        "a-fifo": str(tmp_path / "fifo"),
        "another-file": str(tmp_path / "passwd"),
    }[where]
    with pytest.raises(SettingsError, match="GATEWAY_PACING_FILE"):
        load_settings({"GATEWAY_PACING_FILE": value})


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="a-new-file"),
        pytest.param("", id="an-empty-file"),
        pytest.param("{}", id="a-private-file"),
        # A write cut off by a crash: the pacer starts such a table again.
        pytest.param('{"acct": [17', id="a-torn-table"),
    ],
)
def test_a_pacing_file_in_an_existing_directory_is_accepted(
    tmp_path: Any, content: str | None
) -> None:
    path = tmp_path / "pacing"
    if content is not None:
        path.write_text(content)
        path.chmod(0o600)
    assert load_settings({"GATEWAY_PACING_FILE": str(path)}).pacing_file == str(path)


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        pytest.param({}, 5.0, id="defaults"),
        pytest.param({"GATEWAY_UPSTREAM_RATE": "0.1"}, 10.0, id="a-slow-rate-alone"),
        pytest.param({"GATEWAY_UPSTREAM_RATE": "0"}, 5.0, id="pacing-off"),
        pytest.param(
            {"GATEWAY_UPSTREAM_RATE": "0.1", "GATEWAY_LIVE_INTERVAL": "30"}, 30.0, id="both-set"
        ),
    ],
)
def test_the_live_interval_is_never_faster_than_the_pacing(
    environ: dict[str, str], interval: float
) -> None:
    assert load_settings(environ).live_interval == interval


def test_a_live_interval_set_faster_than_the_pacing_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_LIVE_INTERVAL"):
        load_settings({"GATEWAY_UPSTREAM_RATE": "0.1", "GATEWAY_LIVE_INTERVAL": "2"})


@pytest.mark.parametrize(
    ("host", "url"),
    [
        pytest.param("127.0.0.1", "http://127.0.0.1:8000", id="loopback"),
        pytest.param("0.0.0.0", "http://127.0.0.1:8000", id="every-ipv4-interface"),  # noqa: S104
        pytest.param("::", "http://127.0.0.1:8000", id="every-ipv6-interface"),
        pytest.param("::1", "http://[::1]:8000", id="ipv6-loopback"),
        pytest.param("gateway.internal", "http://gateway.internal:8000", id="name"),
    ],
)
def test_the_local_url_reaches_the_gateway_from_this_machine(host: str, url: str) -> None:
    assert load_settings({"GATEWAY_HOST": host}).local_url == url
