"""The scheduler's in-process query embeddings are the inference service's embeddings."""

from __future__ import annotations

from contextlib import AsyncExitStack

import numpy as np

from services.common.embedder import Embedder, open_query_embedder
from services.common.onnx_embedding import LocalEmbedder
from services.common.settings import EmbedderSettings, QueryEmbedderSettings

TEXTS = [
    "When did Caroline go to the LGBTQ support group?",
    "Melanie: We went camping with the kids in the mountains.",
    "x",
    "a much longer text " * 200,  # past the model's 256-token window: truncated the same way
]


async def test_local_and_triton_embeddings_agree(triton_addr):
    triton = Embedder(EmbedderSettings(inference_addr=triton_addr))
    async with AsyncExitStack() as stack:
        local = open_query_embedder(stack, QueryEmbedderSettings(inference_addr=triton_addr))
        assert isinstance(local, LocalEmbedder)
        ours, theirs = await local.embed(TEXTS), await triton.embed(TEXTS)
        await triton.close()
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() > 0.999
