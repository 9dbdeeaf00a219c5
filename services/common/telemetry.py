"""OpenTelemetry: tracer setup and W3C trace-context propagation over gRPC metadata and NATS headers."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

log = logging.getLogger(__name__)


def configure_tracing(service: str, exporter: str, endpoint: str = "") -> None:
    """Install a tracer provider once per process; "none" keeps spans (and trace ids in logs) without export."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return  # already configured (tests run several services in one process)
    provider = TracerProvider(resource=Resource.create({"service.name": f"memos-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint or None)))
    trace.set_tracer_provider(provider)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add traceparent (and tracestate) of the current span to a header dict, returned for chaining."""
    propagate.inject(headers)
    return headers


def extract_context(carrier: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(carrier or {}))
