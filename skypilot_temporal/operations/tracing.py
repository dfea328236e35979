"""Optional tracing: a span for each workflow run and each activity, with Temporal's own
`temporalio.contrib.opentelemetry.TracingInterceptor`, exported over OTLP/HTTP.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; the
exporter reads the standard OTEL_EXPORTER_OTLP_* settings itself (headers, timeout, ...), and
OTEL_SERVICE_NAME names the worker (default skypilot-temporal-worker). OpenTelemetry's SDK is
imported only when tracing is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from skypilot_temporal.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor

ENDPOINT_SETTINGS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_SETTINGS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
DEFAULT_SERVICE_NAME = "skypilot-temporal-worker"


def otlp_endpoint(environ: Mapping[str, str]) -> str:
    """The configured OTLP endpoint, or "" when tracing is off."""
    return _first(environ, ENDPOINT_SETTINGS)


def tracing(
    exporter: SpanExporter, service_name: str = DEFAULT_SERVICE_NAME
) -> tuple[TracingInterceptor, TracerProvider]:
    """An interceptor (for the client, so its workers too) whose spans go to `exporter`, and the
    provider behind it (shut it down to flush the last spans)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # Runs started by an untraced client (the starter, a schedule) get a workflow span too.
    return TracingInterceptor(provider.get_tracer(__name__), always_create_workflow_spans=True), provider


def otlp_tracing(environ: Mapping[str, str]) -> tuple[TracingInterceptor, TracerProvider] | None:
    """Tracing to the configured OTLP endpoint, or None when none is configured."""
    if not otlp_endpoint(environ):
        return None
    protocol = _first(environ, PROTOCOL_SETTINGS)
    if protocol not in ("", "http/protobuf"):
        setting = next(name for name in PROTOCOL_SETTINGS if environ.get(name, "").strip())
        raise ConfigError(f"{setting}={protocol}: the worker exports traces over http/protobuf only")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return tracing(OTLPSpanExporter(), _first(environ, ("OTEL_SERVICE_NAME",)) or DEFAULT_SERVICE_NAME)


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> str:
    return next((environ[name].strip() for name in names if environ.get(name, "").strip()), "")
