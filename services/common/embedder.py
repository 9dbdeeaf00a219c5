"""The embedding model, reached over Triton's KServe-v2 gRPC protocol (tritonclient)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Protocol

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from .errors import Unavailable
from .settings import EmbedderSettings, QueryEmbedderSettings

log = logging.getLogger(__name__)


class Embedder:
    """Embeds texts with the model served as ``embed_model``; vectors are L2-normalised float32."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self._settings = settings
        self._client = triton.InferenceServerClient(settings.inference_addr)

    @property
    def dim(self) -> int:
        return self._settings.embed_dim

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = self._settings.embed_batch_size
        parts = [await self._embed_batch(texts[i : i + size]) for i in range(0, len(texts), size)]
        return np.concatenate(parts)

    async def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        data = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        request = triton.InferInput("text", list(data.shape), "BYTES")
        request.set_data_from_numpy(data)
        # Embedding has no side effects, so a failure is retried for a while: the inference service
        # restarts a Triton that died within seconds.
        give_up = time.monotonic() + self._settings.embed_retry_seconds
        pause = 0.2
        while True:
            try:
                result = await self._client.infer(
                    self._settings.embed_model,
                    [request],
                    outputs=[triton.InferRequestedOutput("embedding")],
                    client_timeout=self._settings.embed_timeout_seconds,
                )
                break
            except InferenceServerException as err:
                if time.monotonic() + pause > give_up:
                    raise Unavailable(
                        f"embedding model unavailable: {err.message()}", reason="MODEL_UNAVAILABLE"
                    ) from err
                log.warning("embedding failed (%s); retrying in %.1fs", err.message(), pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        vectors = result.as_numpy("embedding")
        if vectors is None or vectors.shape != (len(texts), self.dim):
            raise Unavailable("embedding model answered with an unexpected shape", reason="MODEL_BAD_OUTPUT")
        return vectors.astype(np.float32, copy=False)

    async def close(self) -> None:
        await self._client.close()


class Embeds(Protocol):
    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def open_embedder(stack: AsyncExitStack, settings: EmbedderSettings) -> Embedder:
    """An embedder closed when ``stack`` closes."""
    embedder = Embedder(settings)
    stack.push_async_callback(embedder.close)
    return embedder


def open_query_embedder(stack: AsyncExitStack, settings: QueryEmbedderSettings) -> Embeds:
    """Triton's embedder, or the same model in-process (``query_embedding=local``)."""
    if settings.query_embedding == "triton":
        return open_embedder(stack, settings)
    from .onnx_embedding import LocalEmbedder, export

    export_dir = export(settings.embedding_model_dir(), settings.model_cache_dir)
    embedder = LocalEmbedder(
        export_dir,
        dim=settings.embed_dim,
        threads=settings.query_embed_threads,
        int8=settings.query_embed_int8,
    )
    stack.push_async_callback(embedder.close)
    log.info(
        "query embeddings in-process from %s%s", export_dir, " (int8)" if settings.query_embed_int8 else ""
    )
    return embedder
