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


def test_the_onnx_graph_gives_the_vectors_of_the_model_itself():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from services.common.onnx_embedding import OnnxEncoder, export

    settings = QueryEmbedderSettings()
    model_dir = settings.embedding_model_dir()
    ours = OnnxEncoder(export(model_dir, settings.model_cache_dir)).encode(TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    theirs = torch.nn.functional.normalize(pooled, dim=1).numpy()
    assert (ours * theirs).sum(axis=1).min() > 0.9999
