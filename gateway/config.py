"""Settings: parsed once, at start-up, from an injectable mapping into a frozen object.

Every setting is `GATEWAY_` + its name in upper snake case. Tests pass a dict; the CLI
passes `os.environ` merged with its flags. Nothing here is read at import time.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import redis.connection as redis_connection
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.pacing_file import holds_a_pacing_table, unfit

ENV_PREFIX = "GATEWAY_"
# The test suite's own switches (GATEWAY_TEST_REQUIRE_NODE, ...): not settings, not misspelt.
TEST_ENV_PREFIX = "GATEWAY_TEST_"
# Settings whose variable is a cross-tool standard rather than GATEWAY_<NAME>.
STANDARD_ENV_NAMES = {
    "otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "otel_service_name": "OTEL_SERVICE_NAME",
    "otel_resource_attributes": "OTEL_RESOURCE_ATTRIBUTES",
}
DEFAULT_UPSTREAM_URL = "https://api.catapult.inetwork.com"

# Every duration is finite and at most an hour: `inf` or 1e308 would overflow the
# conversions downstream (int(), event-loop timers) or serialise as invalid JSON.
MAX_SECONDS = 3600.0
# Resource attributes ride on every exported batch: a few hundred bytes is the use.
MAX_RESOURCE_ATTRIBUTES_CHARS = 4096
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
# Secrets: long enough to resist guessing, and not a template's placeholder left in place.
MIN_SECRET_CHARS = 16
PLACEHOLDER_PREFIXES = ("replace-me", "changeme", "change-me")
# `serve` and `sandbox` check ports alike: a socket call would take 99999 modulo 65536.
Port = Annotated[int, Field(ge=0, le=65535)]


def _off_or_a_tenth(value: float) -> float:
    # Below a tenth of a second the sandbox would redraw its world on nearly every request.
    if 0 < value < 0.1:
        raise ValueError("must be 0 (a still history) or at least 0.1 seconds")
    return value


# Both `serve --sandbox` and `sandbox` read it from GATEWAY_SANDBOX_LIVE_INTERVAL.
LIVE_SANDBOX_DEFAULT = 3.0
LIVE_SANDBOX_HELP = (
    "Seconds between the sandbox's live steps (calls start, are answered, end); "
    "0 keeps its seeded history still."
)
LiveSandboxSeconds = Annotated[Seconds, AfterValidator(_off_or_a_tenth)]


def interface_host(value: str) -> str:
    """`value` if it can name an interface to listen on: not empty, not padded."""
    # An empty host would make uvicorn listen on every interface.
    if not value.strip() or value != value.strip():
        raise ValueError("must be an interface address such as 127.0.0.1 (0.0.0.0 for every one)")
    return value


class Settings(BaseModel):
    """The gateway's configuration (each field is the setting `GATEWAY_<NAME>`)."""

    # A plain pydantic model rather than pydantic-settings' BaseSettings: BaseSettings
    # always reads os.environ as well, and the environment must be an explicit input.
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(
        "127.0.0.1",
        max_length=253,
        description="Interface to listen on (`0.0.0.0` for every IPv4 one; never empty).",
    )
    port: Port = Field(8000, description="TCP port to listen on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    upstream_url: AnyHttpUrl = Field(
        AnyHttpUrl(DEFAULT_UPSTREAM_URL),
        description="Base URL of the Catapult API (without `/v1`).",
    )
    upstream_timeout: PositiveSeconds = Field(
        10.0, description="Seconds to wait for one upstream answer."
    )
    upstream_connect_timeout: PositiveSeconds = Field(
        3.0, description="Seconds to wait for a connection to the upstream."
    )
    upstream_max_connections: int = Field(
        32, ge=1, le=1024, description="Size of the upstream connection pool."
    )
    upstream_max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=64 * 1024,
        le=1024**3,
        description=(
            "Largest upstream body accepted, counted after decompression "
            "(UPSTREAM_BAD_RESPONSE above it); ~3x a 1000-call page with every field."
        ),
    )
    upstream_body_budget_bytes: int = Field(
        48 * 1024 * 1024,
        ge=64 * 1024,
        le=16 * 1024**3,
        description=(
            "Bytes of upstream bodies read or being parsed at once, process-wide; at least "
            "GATEWAY_UPSTREAM_MAX_BODY_BYTES. Past it a body waits, within the request's "
            "deadline (then RATE_LIMITED)."
        ),
    )
    upstream_retries: int = Field(
        2,
        ge=0,
        le=5,
        description="Retries of an idempotent upstream GET on 502/503/504 or connect errors.",
    )
    request_timeout: PositiveSeconds = Field(
        25.0, description="Deadline for a whole GraphQL request, retries included."
    )
    cache_url: str = Field("memory://", description="`memory://` or `redis://host:port/db`.")
    cache_ttl: float = Field(
        5.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Seconds an upstream answer is reused (at most a day); 0 turns caching off.",
    )
    cache_max_entries: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Entries the memory cache holds before evicting the least used.",
    )
    cache_max_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024**3,
        description="Bytes of answers the memory cache holds before evicting the least used.",
    )
    response_cache_max_entries: int = Field(
        1024, ge=1, le=10_000_000, description="Whole GraphQL answers the answer cache holds."
    )
    response_cache_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024**3,
        description="Bytes of whole GraphQL answers the answer cache holds.",
    )
    response_cache_max_answer_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest GraphQL answer the answer cache keeps (larger ones are not kept).",
    )
    cache_key: SecretStr | None = Field(
        None,
        description=(
            "HMAC key for cache and pacing keys (16+ characters); replicas sharing Redis "
            "must share it (unset: `serve` draws a random one shared by its workers)."
        ),
    )
    cache_timeout: PositiveSeconds = Field(
        0.25, description="Seconds one Redis operation may take before the cache is bypassed."
    )
    pacing_file: str | None = Field(
        None,
        description=(
            "A file through which the processes of one host share the pacing schedule "
            "when there is no Redis (they must share one GATEWAY_CACHE_KEY too); "
            "`serve --workers N` sets a fresh one (unset: each process paces alone)."
        ),
    )
    upstream_rate: float = Field(
        1.0,
        ge=0,
        le=10_000,
        allow_inf_nan=False,
        description="Upstream requests per second per account (the upstream's limit); 0: off.",
    )
    upstream_queue_timeout: Seconds = Field(
        2.0,
        description=(
            "Longest wait for an upstream slot, or for an upstream 429 to reset, "
            "before failing with RATE_LIMITED."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="`json` (one object per line), `console` (for people), or `auto`: "
        "`console` when stderr is a terminal, else `json`.",
    )
    shutdown_timeout: int = Field(
        30,
        ge=1,
        le=3600,
        description="Seconds in-flight requests get to finish after SIGTERM before "
        "their connections are closed.",
    )
    live_interval: float = Field(
        5.0,
        ge=0.05,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description=(
            "Seconds between two polls of a page watched with `callsUpdated` (one poll for "
            "every subscriber with the same credentials and arguments); at least "
            "1/GATEWAY_UPSTREAM_RATE (unset, it follows a slower rate)."
        ),
    )
    live_max_per_connection: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Operations one WebSocket connection may run at once (past it: RATE_LIMITED).",
    )
    live_max_per_account: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Live subscriptions one account may hold on one process (past it: "
        "RATE_LIMITED), counted per credentials (token, secret and user id): a wrong "
        "secret with the account's token never takes the owner's room.",
    )
    live_max_documents_per_account: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Distinct subscription requests (document, operation name and variables) "
        "one account's live subscriptions may use at once on one process (past it: "
        "RATE_LIMITED). Each is executed on every update (a 1,000-call page takes a large "
        "part of a second); more subscribers of the same request cost nothing more.",
    )
    live_init_timeout: float = Field(
        3.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds a new WebSocket has to send `connection_init` before it is "
        "closed with 4408.",
    )
    live_keepalive: float = Field(
        12.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds between keep-alive comments on an idle Server-Sent Events stream.",
    )
    otlp_endpoint: AnyHttpUrl | None = Field(
        None,
        description="OTLP/HTTP collector base URL (traces go to `<url>/v1/traces`); "
        "unset: no tracing. Needs the `otel` extra.",
    )
    otel_service_name: str = Field(
        "catapult-gateway",
        min_length=1,
        max_length=255,
        description="The `service.name` of the gateway's spans, when tracing is on.",
    )
    otel_resource_attributes: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "More resource attributes of the gateway's spans, as `key=value` pairs separated "
            "by commas, values percent-encoded (OpenTelemetry's format). `service.name` and "
            "`service.version` here are overridden by `OTEL_SERVICE_NAME` and the release."
        ),
    )
    sandbox: bool = Field(False, description="Serve in front of the built-in sandbox upstream.")
    sandbox_live_interval: LiveSandboxSeconds = Field(
        LIVE_SANDBOX_DEFAULT, description=LIVE_SANDBOX_HELP + " With `GATEWAY_SANDBOX` only."
    )
    cursor_key: SecretStr | None = Field(
        None,
        description=(
            "Secret that signs `callsConnection` cursors (16+ characters). Without it each "
            "process draws a random key: `serve --workers N` shares one drawn at start-up, "
            "but separate replicas behind a load balancer must all be given the same key, "
            "or a cursor issued by one is refused as forged by another."
        ),
    )
    fast_path: bool = Field(
        True,
        description=(
            "Answer operations that only select `calls` through the compiled path "
            "(off: always the standard executor)."
        ),
    )
    max_depth: int = Field(
        10, ge=1, le=100, description="Deepest field nesting an operation may have."
    )
    max_aliases: int = Field(30, ge=0, le=10_000, description="Aliases one operation may use.")
    max_tokens: int = Field(
        2000, ge=10, le=1_000_000, description="GraphQL tokens one document may have."
    )
    max_query_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest GraphQL document accepted, in UTF-8 bytes, refused "
        "(OPERATION_TOO_COMPLEX) before parsing: 2000 tokens at 16 bytes each with their "
        "indentation; the token limit alone let one 900 KB comment cost a 0.5 s parse.",
    )
    max_root_fields: int = Field(
        20, ge=1, le=10_000, description="Root fields one operation may select."
    )
    max_upstream_requests: int = Field(
        10, ge=1, le=10_000, description="Upstream requests one operation may cause."
    )
    max_calls_per_operation: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="Calls one operation may serve, over all its `calls`, `callsConnection`, "
        "`call` and `_entities` fields, counted from the document's `size` and `first` "
        "before any upstream request and again from the pages actually served (past it: "
        "OPERATION_TOO_COMPLEX). The default is a full page of 1000 plus one "
        "`callsConnection` walk at its longest (4 pages of 1000): about 16 MB of JSON "
        "with every field, where 20 aliased pages were 67 MB.",
    )
    max_entities: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Entity representations one operation may resolve, over all its "
        "`_entities` fields (a page's worth by default).",
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=1024**3,
        description="Largest request body accepted, measured after gzip or deflate "
        "decoding (413 above it; decided from `Content-Length` before reading when declared).",
    )
    max_header_bytes: int = Field(
        65_536,
        ge=1024,
        le=16_777_216,
        description="Largest request line plus headers accepted (431 above it).",
    )
    max_header_line_bytes: int = Field(
        16_384,
        ge=256,
        le=16_777_216,
        description="Longest single request header line accepted (431 above it).",
    )
    max_headers: int = Field(
        100, ge=8, le=10_000, description="Most request header fields accepted (431 above it)."
    )
    header_timeout: PositiveSeconds = Field(
        10.0,
        description="Seconds a request's line and headers may take to arrive, from the "
        "connection opening or the request's first byte (408 after it).",
    )
    body_timeout: PositiveSeconds = Field(
        30.0,
        description="Seconds a request body may take to arrive after its headers (408 after it).",
    )
    keepalive_timeout: PositiveSeconds = Field(
        5.0, description="Seconds an idle keep-alive connection is kept open between requests."
    )
    send_timeout: PositiveSeconds = Field(
        60.0,
        description="Seconds the client may take to read an answer once it is written; "
        "then the connection is aborted and what it has not read is dropped.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Client connections one worker process keeps open; one more is "
        "answered 503 with `Retry-After: 1` at once and closed. Lowered at start-up, with "
        "a warning, to what the file descriptor limit holds beside the upstream pool and "
        "64 spare (the soft `ulimit -n` is first raised towards the hard one).",
    )
    max_connections_per_client: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="Client connections one worker keeps open from one client address "
        "(IPv6: one /64); more are answered 503 with `Retry-After: 1`. The last "
        "`GATEWAY_MAX_CONNECTIONS / 50` connections (at least 1, at most 20) are kept "
        "for addresses holding none, so health checks get in. Behind a proxy or load "
        "balancer every "
        "client shares its address: raise this to `GATEWAY_MAX_CONNECTIONS` there.",
    )
    introspection: bool = Field(True, description="Answer schema introspection queries.")
    field_suggestions: bool = Field(
        True, description='Add "Did you mean ...?" hints to validation errors.'
    )
    csrf_prevention: bool = Field(
        True,
        description="Refuse requests a browser could send without a CORS preflight.",
    )
    cors_origins: tuple[str, ...] = Field(
        (),
        description="Comma-separated origins allowed to call the API from a browser.",
    )

    cors_allow_headers: tuple[str, ...] = Field(
        (),
        description=(
            "Comma-separated request headers browsers may send cross-origin, beyond the "
            "gateway's own and the GraphQL clients' standard ones (which are always allowed)."
        ),
    )

    @field_validator("otel_resource_attributes", mode="before")
    @classmethod
    def _resource_attributes(cls, value: Any) -> Any:
        # OpenTelemetry's own reading of the variable, done here so that only this module
        # reads the environment: `k=v` pairs, values percent-decoded. A pair without `=`
        # or with an empty key is an operator's typo: refused at start-up, not dropped.
        if not isinstance(value, str):
            return value
        if len(value) > MAX_RESOURCE_ATTRIBUTES_CHARS:
            raise ValueError(f"at most {MAX_RESOURCE_ATTRIBUTES_CHARS} characters")
        attributes: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in value.split(","))):
            key, equals, raw = pair.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"{pair!r} is not key=value")
            attributes[key.strip()] = unquote(raw.strip())
        return attributes

    @field_validator("cors_origins", "cors_allow_headers", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _plain_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # An allow-list of exact origins: a wildcard would let every site read answers
        # fetched with a visitor's credentials.
        # Browsers send the origin serialised (RFC 6454): scheme and host in lower case, no
        # default port. The list is compared as strings, so it is kept in that form.
        serialised = []
        for origin in value:
            parts = urlsplit(origin.lower())
            scheme = parts.scheme.lower()
            if (
                scheme not in {"http", "https"}
                or not parts.netloc
                or parts.path
                or parts.query
                or parts.fragment
                or parts.username is not None
            ):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"{origin!r} has a port that is not a number") from None
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            default = 443 if scheme == "https" else 80
            serialised.append(
                f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")
            )
        return tuple(serialised)

    @field_validator("cors_allow_headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # RFC 9110 token characters only: a header name is what the browser will compare.
        for name in value:
            if not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name):
                raise ValueError(f"{name!r} is not a header name")
        return tuple(name.lower() for name in value)

    @field_validator("cache_url")
    @classmethod
    def _known_cache_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"memory", "redis", "rediss"}:
            raise ValueError("must start with memory://, redis:// or rediss://")
        db = parts.path.strip("/")
        if parts.scheme != "memory" and db and not (db.isascii() and db.isdigit()):
            raise ValueError("the Redis database must be a number, as in redis://host:6379/0")
        if parts.scheme != "memory":
            # redis-py's own parser reads the URL at start-up (see gateway.upstream.cache): the same
            # one checks it here, so what passes here connects as written.
            try:
                redis_connection.parse_url(value)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ValueError(f"{exc}, as in redis://:password@host:6379/0") from None
        return value

    @field_validator("pacing_file")
    @classmethod
    def _usable_pacing_file(cls, value: str | None) -> str | None:
        # Said at start-up, not as a warning at the first upstream request: a wrong path
        # would quietly let N workers send N times the upstream's rate.
        if value is None:
            return None
        path = Path(value)
        if not value.strip() or path.is_dir() or not path.parent.is_dir():
            raise ValueError("must be a file path in an existing directory")
        if path.is_symlink():
            raise ValueError("must not be a symbolic link")
        try:
            info = path.lstat()
        except FileNotFoundError:
            return value  # created private (0600) at the first upstream request
        # The pacer's own rule, checked again at each open: a file it refuses there
        # leaves every worker pacing alone, N workers sending N requests a second.
        problem = unfit(info)
        if problem is not None:
            raise ValueError(problem)
        with path.open("rb") as file:
            first_byte = file.read(1)
        if not holds_a_pacing_table(first_byte):
            # The pacer rewrites the file whole: a mistyped path must not cost a file.
            raise ValueError("holds something other than a pacing table (empty or JSON)")
        return value

    @field_validator("cache_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("cache_key", "cursor_key")
    @classmethod
    def _a_real_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The messages never hold the value (see `_one_line`, which shows no input here).
        if value is None:
            return None
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError("must not be whitespace only")
        if secret != secret.strip():
            raise ValueError("must not start or end with whitespace")
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`)"
            )
        if secret.lower().startswith(PLACEHOLDER_PREFIXES):
            raise ValueError(
                "is still a placeholder; set a random value (e.g. `openssl rand -hex 32`)"
            )
        return value

    @field_validator("host")
    @classmethod
    def _a_host(cls, value: str) -> str:
        return interface_host(value)

    @field_validator("upstream_url")
    @classmethod
    def _no_path_query_or_credentials(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # Credentials come from each caller; a base URL carrying its own would be sent
        # with every caller's request, and a query string would be silently dropped.
        if value.username or value.password or value.query or value.fragment:
            raise ValueError("must be a plain base URL without credentials, query or fragment")
        return value

    @model_validator(mode="after")
    def _timeouts_fit_the_deadline(self) -> Settings:
        if self.upstream_timeout >= self.request_timeout:
            raise ValueError(
                "GATEWAY_UPSTREAM_TIMEOUT must be shorter than GATEWAY_REQUEST_TIMEOUT "
                f"({self.upstream_timeout} >= {self.request_timeout})"
            )
        return self

    @model_validator(mode="after")
    def _one_body_fits_the_budget(self) -> Settings:
        if self.upstream_body_budget_bytes < self.upstream_max_body_bytes:
            raise ValueError(
                "GATEWAY_UPSTREAM_BODY_BUDGET_BYTES must be at least "
                "GATEWAY_UPSTREAM_MAX_BODY_BYTES "
                f"({self.upstream_body_budget_bytes} < {self.upstream_max_body_bytes})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _live_interval_follows_a_slow_pacing(cls, data: Any) -> Any:
        # Unset, the interval is its default or the pacing's spacing, whichever is longer:
        # a slow GATEWAY_UPSTREAM_RATE alone must not stop a gateway that nobody watches.
        if not isinstance(data, dict) or "live_interval" in data:
            return data
        default = cls.model_fields["live_interval"].default
        try:
            rate = float(data.get("upstream_rate", cls.model_fields["upstream_rate"].default))
        except (TypeError, ValueError):
            return data  # the field's own validation says what is wrong with it
        if rate > 0 and default * rate < 1:
            return {**data, "live_interval": min(1 / rate, MAX_SECONDS)}
        return data

    @model_validator(mode="after")
    def _live_polls_fit_the_pacing(self) -> Settings:
        # One poll per interval per watched page: faster than the pacing allows, every
        # other tick would wait for a slot or be skipped.
        if self.upstream_rate > 0 and self.live_interval * self.upstream_rate < 1:
            raise ValueError(
                "GATEWAY_LIVE_INTERVAL must be at least 1/GATEWAY_UPSTREAM_RATE "
                f"({self.live_interval} < {1 / self.upstream_rate:g} seconds)"
            )
        return self

    @model_validator(mode="after")
    def _sandbox_needs_a_known_port(self) -> Settings:
        # The in-process sandbox is reached over loopback at the configured port: with 0
        # (any free port) the gateway would call port 0 and every query would fail.
        if self.sandbox and self.port == 0:
            raise ValueError(
                "GATEWAY_PORT (--port) must not be 0 with GATEWAY_SANDBOX (--sandbox): "
                "the gateway reaches its sandbox at that port; choose a free one"
            )
        return self

    @model_validator(mode="after")
    def _header_line_fits_the_headers(self) -> Settings:
        if self.max_header_line_bytes > self.max_header_bytes:
            raise ValueError(
                "GATEWAY_MAX_HEADER_LINE_BYTES must not exceed GATEWAY_MAX_HEADER_BYTES "
                f"({self.max_header_line_bytes} > {self.max_header_bytes})"
            )
        return self

    @property
    def upstream_base(self) -> str:
        """The upstream base URL without a trailing slash."""
        return str(self.upstream_url).rstrip("/")

    @property
    def local_url(self) -> str:
        """Where a client on this machine reaches the gateway: a wildcard host as loopback."""
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::"} else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


class SandboxSettings(BaseModel):
    """`catapult-gateway sandbox` (each field is the setting `GATEWAY_SANDBOX_<NAME>`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(
        "127.0.0.1",
        max_length=253,
        description="Interface to listen on (`0.0.0.0` for every IPv4 one; never empty).",
    )
    port: Port = Field(8001, description="TCP port to listen on.")
    latency_ms: float = Field(
        0.0,
        ge=0,
        le=MAX_SECONDS * 1000,
        allow_inf_nan=False,
        description="Milliseconds every answer is delayed.",
    )
    rate_limit: bool = Field(False, description="Enforce 1 request/second per account.")
    live_interval: LiveSandboxSeconds = Field(LIVE_SANDBOX_DEFAULT, description=LIVE_SANDBOX_HELP)

    @field_validator("host")
    @classmethod
    def _a_host(cls, value: str) -> str:
        return interface_host(value)


SANDBOX_ENV_PREFIX = "GATEWAY_SANDBOX_"
M = TypeVar("M", bound=BaseModel)
# Settings whose values an error message never repeats.
SECRET_SETTINGS = frozenset({"cache_key", "cursor_key", "cache_url", "otlp_endpoint"})


def bounded_input(value: object) -> object:
    """A rejected value as an error line shows it: long text is cut."""
    if isinstance(value, str) and len(value) > 80:
        return value[:80] + "..."
    return value


class SettingsError(Exception):
    """Start-up settings are invalid; `str()` is one line naming the setting."""


def load_settings(environ: Mapping[str, str], **flags: Any) -> Settings:
    """Build `Settings` from an environment mapping plus the command line's flags.

    Only keys starting with `GATEWAY_` are read from `environ`; flags (`port=...` for
    `--port`) win, and an error in a value names the flag or the variable it came from.
    """
    known = Settings.model_fields
    values: dict[str, Any] = {}
    standard = {env: name for name, env in STANDARD_ENV_NAMES.items()}
    for key, value in environ.items():
        name = key[len(ENV_PREFIX) :].lower()
        # Unknown GATEWAY_* variables are ignored rather than fatal: replicas of different
        # versions share one environment, and other tools use the prefix (GATEWAY_TEST_*).
        if key.upper().startswith(ENV_PREFIX) and name in known and name not in standard.values():
            values[name] = value
        elif key in standard and value:
            values[standard[key]] = value
    return _validate(Settings, values, flags, env_name)


def load_sandbox_settings(environ: Mapping[str, str], **flags: Any) -> SandboxSettings:
    """`SandboxSettings` from `GATEWAY_SANDBOX_*` variables plus flags, as `load_settings`."""
    values = {
        name: environ[sandbox_env_name(name)]
        for name in SandboxSettings.model_fields
        if sandbox_env_name(name) in environ
    }
    return _validate(SandboxSettings, values, flags, sandbox_env_name)


def _validate(
    model: type[M],
    values: dict[str, Any],
    flags: Mapping[str, Any],
    variable: Callable[[str], str],
) -> M:
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return model.model_validate({**values, **given})
    except ValidationError as exc:

        def source(field: str) -> str:
            # The user typed `--port 99999`: the error says `--port`, not GATEWAY_PORT.
            return flag_name(field) if field in given else variable(field)

        raise SettingsError(_one_line(exc, source)) from None


def unknown_variables(environ: Mapping[str, str], also_known: Iterable[str] = ()) -> list[str]:
    """One warning per `GATEWAY_*` variable that is no setting, naming the closest real one.

    Unknown variables stay harmless (see `load_settings`), but a misspelt setting
    (`GATEWAY_CACHE_TLL`) would otherwise be ignored without a word. The sandbox
    command's `GATEWAY_SANDBOX_*` settings are known too.
    """
    known = sorted(
        {env_name(name) for name in Settings.model_fields if name not in STANDARD_ENV_NAMES}
        | {sandbox_env_name(name) for name in SandboxSettings.model_fields}
        | set(also_known)
    )
    warnings = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(TEST_ENV_PREFIX):
            continue
        if upper in known:
            continue
        # Compared without the prefix, which every name shares and would make all look alike.
        close = difflib.get_close_matches(
            upper.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1
        )
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        warnings.append(f"{key} is not a setting and is ignored{hint}")
    return warnings


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return STANDARD_ENV_NAMES.get(field, f"{ENV_PREFIX}{field.upper()}")


def sandbox_env_name(field: str) -> str:
    """The environment variable of a sandbox setting."""
    return f"{SANDBOX_ENV_PREFIX}{field.upper()}"


def flag_name(field: str) -> str:
    """The command-line flag of a setting."""
    return "--" + field.replace("_", "-")


def _one_line(exc: ValidationError, source: Callable[[str], str]) -> str:
    error = exc.errors()[0]
    location = "".join(str(part) for part in error["loc"][:1])
    name = source(location) if location else "settings"
    message = error["msg"]
    if not location and message.startswith("Value error, "):
        return message.removeprefix("Value error, ")
    given = error.get("input")
    # A secret's value is never shown, nor a URL that may carry a password.
    hidden = isinstance(given, dict) or location in SECRET_SETTINGS
    shown = "" if hidden else f" (got {bounded_input(given)!r})"
    return f"{name}: {message.removeprefix('Value error, ')}{shown}"
