"""Starts Triton with the mesh's models; the service's own gRPC endpoint carries health only."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import torch
from pytriton.triton import Triton, TritonConfig

from services.common.blobs import open_blob_store
from services.common.grpc_host import Component

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
        if settings.generate_enabled:
            lm = load_language_model(settings)
            activations = ActivationStore(
                model_id=lm.model_id,
                blobs=open_blob_store(settings),
                hot=HotCaches(settings.kv_hot_bytes),
                dtype=KV_DTYPES[settings.kv_dtype],
                compute_dtype=torch.float32,
            )
            served = ServedAdapters(Adapters(lm), open_blob_store(settings), max_loaded=settings.max_adapters)
            bind_generator(triton, lm, activations, served)
            bind_kv_builder(triton, lm, activations)
        bind_embedder(
            triton,
            settings.embedding_model_dir(),
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
