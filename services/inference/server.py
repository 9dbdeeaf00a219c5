"""Starts Triton with the mesh's models; the service's own gRPC endpoint carries health only."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

from pytriton.triton import Triton, TritonConfig

from services.common.grpc_host import Component

from .models import bind_embedder, default_embedding_model_path
from .settings import InferenceSettings

log = logging.getLogger(__name__)


async def setup(stack: AsyncExitStack, settings: InferenceSettings) -> Component:
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    log_dir = settings.log_dir or Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="memos-triton-"))
    )
    config = TritonConfig(
        grpc_address=settings.triton_address,
        grpc_port=settings.triton_grpc_port,
        http_address=settings.triton_address,
        http_port=settings.triton_http_port,
        metrics_address=settings.triton_address,
        metrics_port=settings.triton_metrics_port,
        log_file=log_dir / "triton.log",
        log_verbose=0,
    )
    triton = Triton(config=config)

    def start() -> None:
        bind_embedder(
            triton,
            settings.embed_model_path or default_embedding_model_path(),
            max_batch_size=settings.embed_max_batch_size,
            queue_delay_us=settings.embed_queue_delay_microseconds,
        )
        triton.run()  # returns once the server and its models are ready

    await asyncio.to_thread(start)
    stack.callback(triton.stop)
    log.info(
        "Triton ready: gRPC %s:%d, HTTP %s:%d",
        settings.triton_address,
        settings.triton_grpc_port,
        settings.triton_address,
        settings.triton_http_port,
    )
    return Component(registrations=[])
