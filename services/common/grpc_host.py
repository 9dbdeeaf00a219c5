"""Hosting a service: gRPC server with health, reflection, errors and tracing; one main() shape.

A service is a ``setup(stack, settings) -> Component`` function. ``ServiceHost`` runs it
in-process (tests) and ``run_service`` runs it as a process (signals, graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace

from memos_sdk.channels import Tls

from .access import Rule
from .auth import current_caller
from .errors import MemosError, to_status
from .guard import Guard
from .logs import configure_logging
from .settings import ServiceSettings
from .telemetry import configure_tracing, extract_context

log = logging.getLogger(__name__)


@dataclass
class Registration:
    """One gRPC service implementation: ``add(servicer, server)``, its full name for health and
    reflection, and the access rule of each of its methods (every method must have one)."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str
    access: Mapping[str, Rule]

    @classmethod
    def of(
        cls,
        file_descriptor: Any,
        service: str,
        add: Callable[[Any, grpc.aio.Server], None],
        servicer: Any,
        access: Mapping[str, Rule],
    ):
        """``Registration.of(vault_pb2.DESCRIPTOR, "VaultService", add_..._to_server, servicer, ACCESS)``."""
        descriptor = file_descriptor.services_by_name[service]
        missing = [m.name for m in descriptor.methods if m.name not in access]
        if missing:
            raise ValueError(f"{service}: no access rule for {', '.join(missing)}")
        return cls(add, servicer, descriptor.full_name, access)

    def rules(self) -> dict[str, Rule]:
        """Access rules by full method path (/package.Service/Method)."""
        return {f"/{self.full_name}/{method}": rule for method, rule in self.access.items()}


@dataclass
class Component:
    """What a service's setup returns: gRPC services, and background work run while it serves."""

    registrations: Sequence[Registration]
    background: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Called first on shutdown, before the gRPC server stops (stop fetching, finish in-flight work).
    on_stop: Callable[[], Awaitable[None]] | None = None


Setup = Callable[[AsyncExitStack, Any], Awaitable[Component]]


class _ServerInterceptor(grpc.aio.ServerInterceptor):
    """Continues the caller's trace, admits the caller through the guard (token, rate, cube role,
    audit), and turns MemosError (or a crash) into a status with ErrorInfo."""

    def __init__(self, gate: Guard, rules: Mapping[str, Rule]) -> None:
        self._gate = gate
        self._rules = rules
        self._tracer = trace.get_tracer("memos.grpc")  # a lookup under a lock: once, not per call

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        method = handler_call_details.method
        carrier = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        rule = self._rules[method]
        tracer = self._tracer

        async def guard(
            context: grpc.aio.ServicerContext, request: Any, call: Callable[[], Awaitable[Any]]
        ) -> Any:
            token = otel_context.attach(extract_context(carrier))
            caller_token = None
            try:
                with tracer.start_as_current_span(method, kind=trace.SpanKind.SERVER) as span:
                    try:
                        caller_token = current_caller.set(
                            await self._gate.admit(method, rule, request, carrier)
                        )
                        return await call()
                    except MemosError as err:
                        span.set_attribute("rpc.error_reason", err.reason)
                        await context.abort_with_status(to_status(err))
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        raise
                    except Exception:
                        log.exception("unhandled error in %s", method)
                        span.set_status(trace.Status(trace.StatusCode.ERROR))
                        await context.abort_with_status(
                            to_status(MemosError("internal error; see the service log", reason="INTERNAL"))
                        )
            finally:
                if caller_token is not None:
                    current_caller.reset(caller_token)
                otel_context.detach(token)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                return await guard(context, request, lambda: inner(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                async def drain() -> None:
                    async for item in inner_stream(request, context):
                        await context.write(item)

                await guard(context, request, drain)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def create_server(
    addr: str,
    registrations: Sequence[Registration],
    gate: Guard | None,
    *,
    max_message_bytes: int,
    tls: Tls | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build a server with health and reflection; returns it with its bound port (addr may use port 0)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A port another server holds is an error, not shared: with SO_REUSEPORT two services
        # (or two vaults) on one port would each get part of the calls.
        ("grpc.so_reuseport", 0),
    ]
    rules = {path: rule for reg in registrations for path, rule in reg.rules().items()}
    interceptors = [_ServerInterceptor(gate, rules)] if gate is not None else []
    server = grpc.aio.server(interceptors=interceptors, options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for reg in registrations:
        reg.add(reg.servicer, server)
    names = [reg.full_name for reg in registrations]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_secure_port(addr, tls.server_credentials()) if tls else server.add_insecure_port(addr)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {addr}")
    return server, port, health_servicer


class ServiceHost:
    """Runs one service in the current event loop: ``async with ServiceHost(...) as host: host.port``."""

    def __init__(self, name: str, settings: ServiceSettings, setup: Setup) -> None:
        self.name = name
        self.settings = settings
        self._setup = setup
        self._stack = AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.guard: Guard | None = None
        self.failed: asyncio.Future[BaseException] | None = None

    async def __aenter__(self) -> ServiceHost:
        try:
            self.component = await self._setup(self._stack, self.settings)
            # Inference serves Triton's own protocol (inside the mesh only) and no RPC of ours.
            self.guard = (
                await Guard.open(self._stack, self.settings, self.name)
                if self.component.registrations
                else None
            )
            server, self.port, self._health = create_server(
                self.settings.grpc_addr,
                self.component.registrations,
                self.guard,
                max_message_bytes=self.settings.max_message_bytes,
                tls=self.settings.tls(),
            )
            self._server = server
            await server.start()
            self.failed = asyncio.get_running_loop().create_future()
            for work in self.component.background:
                task = asyncio.create_task(work(), name=f"{self.name}:{getattr(work, '__name__', 'work')}")
                task.add_done_callback(self._on_task_done)
                self._tasks.append(task)
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("%s serving on port %d", self.name, self.port, extra={"port": self.port})
        return self

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.failed is None or self.failed.done():
            return
        error = task.exception() or RuntimeError(f"background task {task.get_name()} ended")
        self.failed.set_result(error)

    async def _set_health(self, status: int) -> None:
        await self._health.set("", status)
        for reg in self.component.registrations:
            await self._health.set(reg.full_name, status)

    async def __aexit__(self, *exc: object) -> None:
        log.info("%s stopping", self.name)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.component.on_stop is not None:
            await self.component.on_stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.stop(self.settings.shutdown_grace_seconds)
        await self._stack.aclose()
        log.info("%s stopped", self.name)


def run_service(name: str, settings_cls: type[ServiceSettings], setup: Setup) -> None:
    """Process entry point: validate settings, serve until SIGINT/SIGTERM, shut down gracefully."""
    settings = settings_cls()
    configure_logging(name, settings.log_level, settings.log_format)
    configure_tracing(name, settings.otel_exporter, settings.otel_endpoint)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with ServiceHost(name, settings, setup) as host:
            print(f"{name} listening on port {host.port}", flush=True)
            # What start-up built (models, tables, modules) lives as long as the process; out of
            # the collector's sight, a full collection no longer walks it while requests wait.
            gc.collect()
            gc.freeze()
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({stopper, host.failed}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if host.failed in done:
                log.error("%s: fatal error in background work: %r", name, host.failed.result())
                return 1
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(main()))
