"""OpenTelemetry traces, exported over OTLP/HTTP to `Settings.otlp_endpoint` when it is set.

Only imported when tracing is on, so the `otel` extra is needed only then. The tracer
provider belongs to the app (not the process-global one), and spans are exported in
batches from a background thread, so a missing collector costs a logged export error,
never a failed request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry.context import Context as TraceContext
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.upstream import routes


def upstream_route(path: str) -> str:
    """The route template of an upstream path: the user and call ids are the caller's data,
    so spans name the route, not the path."""
    return routes.template(path)


class Tracing:
    """A tracer exporting to one OTLP/HTTP endpoint, and W3C trace context in and out."""

    def __init__(
        self, endpoint: str, *, service_name: str, resource_attributes: Mapping[str, str]
    ) -> None:
        # Resource(...) rather than Resource.create(...), which would read OTEL_SERVICE_NAME
        # and OTEL_RESOURCE_ATTRIBUTES itself: settings read them (config.py), so they are
        # passed in; the name and the release win over the same keys among the attributes.
        resource = Resource(
            {**resource_attributes, SERVICE_NAME: service_name, SERVICE_VERSION: __version__}
        )
        self.provider = TracerProvider(resource=resource)
        # The endpoint is passed in (Settings.otlp_endpoint), so OTEL_EXPORTER_OTLP_*ENDPOINT
        # is not read here. What OpenTelemetry still reads from the environment itself, as
        # an operator's deployment knobs with no Settings of their own: the exporter's
        # OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE and
        # _CLIENT_KEY/_CLIENT_CERTIFICATE, and the batch processor's OTEL_BSP_*.
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces"))
        )
        self._tracer = self.provider.get_tracer("gateway", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def server_span(self, method: str, headers: MutableMapping[str, str]) -> Iterator[Span]:
        """The span of one GraphQL request, continuing the caller's trace if it sent one."""
        parent: TraceContext = self._propagator.extract(headers)
        with self._tracer.start_as_current_span(
            f"{method} /graphql",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": "/graphql"},
        ) as span:
            yield span

    @contextmanager
    def client_span(
        self, method: str, path: str, headers: MutableMapping[str, str]
    ) -> Iterator[Span]:
        """The span of one upstream request; its trace context goes into `headers`."""
        route = upstream_route(path)
        with self._tracer.start_as_current_span(
            f"{method} {route}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.template": route},
        ) as span:
            self._propagator.inject(headers)
            yield span

    @staticmethod
    def trace_id(span: Span) -> str:
        return format_trace_id(span.get_span_context().trace_id)

    @staticmethod
    def set_status(span: Span, status: int | None, error: str | None = None) -> None:
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None or (status is not None and status >= 500):
            span.set_status(Status(StatusCode.ERROR, error))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter thread."""
        self.provider.shutdown()
