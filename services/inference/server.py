"""Starts Triton with the mesh's models; the service's own gRPC endpoint carries health only."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import torch
from pytriton.triton import Triton, TritonConfig

from services.common.blobs import open_blob_store
from services.common.grpc_host import Component
from services.common.onnx_embedding import export

from .kvcache import KV_DTYPES, ActivationStore, HotCaches
from .llm import load_language_model
from .lora import Adapters, ServedAdapters
from .models import bind_embedder, bind_generator, bind_kv_builder
from .settings import InferenceSettings

log = logging.getLogger(__name__)


async def setup(stack: AsyncExitStack, settings: InferenceSettings) -> Component:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    log_dir = settings.log_dir or Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="memos-triton-"))
    )
    models = await asyncio.to_thread(_load_models, settings)
    triton = TritonSupervisor(settings, log_dir, models)
    await asyncio.to_thread(triton.start)
    stack.callback(triton.stop)
    return Component(registrations=[], background=[triton.watch])


def _load_models(settings: InferenceSettings) -> Callable[[Triton], None]:
    """Loads the language model once; the returned function binds every model to a Triton."""
    if not settings.generate_enabled:
        return lambda triton: _bind_embedder(triton, settings)
    lm = load_language_model(settings)
    activations = ActivationStore(
        model_id=lm.model_id,
        blobs=open_blob_store(settings),
        hot=HotCaches(settings.kv_hot_bytes),
        dtype=KV_DTYPES[settings.kv_dtype],
        compute_dtype=torch.float32,
        device=lm.device,
    )
    served = ServedAdapters(Adapters(lm), open_blob_store(settings), max_loaded=settings.max_adapters)

    def bind(triton: Triton) -> None:
        _bind_embedder(triton, settings)  # first: every write waits for it, after a restart too
        bind_generator(triton, lm, activations, served)
        bind_kv_builder(triton, lm, activations)

    return bind


def _bind_embedder(triton: Triton, settings: InferenceSettings) -> None:
    bind_embedder(
        triton,
        export(settings.embedding_model_dir(), settings.model_cache_dir),
        runs=settings.embed_runs or len(os.sched_getaffinity(0)),
        max_batch_size=settings.embed_max_batch_size,
        queue_delay_us=settings.embed_queue_delay_microseconds,
    )


class TritonSupervisor:
    """Runs Triton with the mesh's models and starts it again when it dies: Triton's Python backend
    can crash (a stub declared unhealthy under CPU starvation takes the server down). Callers see a
    few seconds of UNAVAILABLE. More than ``triton_max_restarts`` restarts within
    ``triton_restart_window_seconds`` ends the service, so that its supervisor sees the failure."""

    def __init__(self, settings: InferenceSettings, log_dir: Path, bind: Callable[[Triton], None]) -> None:
        self._settings = settings
        self._log_dir = log_dir
        self._bind = bind
        self._triton: Triton | None = None
        self._restarts: deque[float] = deque()

    def start(self) -> None:
        s = self._settings
        config = TritonConfig(
            grpc_address=s.triton_address,
            grpc_port=s.triton_grpc_port,
            http_address=s.triton_address,
            http_port=s.triton_http_port,
            metrics_address=s.triton_address,
            metrics_port=s.triton_metrics_port,
            log_file=self._log_dir / "triton.log",
            log_verbose=0,
        )
        triton = Triton(config=config)
        self._bind(triton)
        triton.run()  # returns once the server and its models are ready
        self._triton = triton
        log.info(
            "Triton ready: gRPC %s:%d, HTTP %s:%d",
            s.triton_address,
            s.triton_grpc_port,
            s.triton_address,
            s.triton_http_port,
        )

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

    async def watch(self) -> None:
        s = self._settings
        while True:
            await asyncio.sleep(s.triton_watch_seconds)
            if self._triton is None or await asyncio.to_thread(self._triton.is_alive):
                continue
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > s.triton_restart_window_seconds:
                self._restarts.popleft()
            if len(self._restarts) >= s.triton_max_restarts:
                raise RuntimeError(
                    f"Triton died {len(self._restarts) + 1} times within "
                    f"{s.triton_restart_window_seconds:.0f}s; giving up (see {self._log_dir / 'triton.log'})"
                )
            self._restarts.append(now)
            log.error("Triton died (see %s); starting it again", self._log_dir / "triton.log")
            await asyncio.to_thread(self._restart)

    def _restart(self) -> None:
        try:
            self.stop()
        except Exception:  # the dead server's leftovers must not keep a new one from starting
            log.exception("cleaning up the dead Triton failed")
            self._triton = None
        self.start()
