"""The embedding model on ONNX Runtime gives the reference model's vectors, and the scheduler's
in-process query embeddings are the inference service's embeddings."""

from __future__ import annotations

from contextlib import AsyncExitStack

import numpy as np

from services.common.embedder import Embedder, open_query_embedder
from services.common.onnx_embedding import LocalEmbedder, OnnxEncoder, export
from services.common.settings import EmbedderSettings, ModelFilesSettings, QueryEmbedderSettings

TEXTS = [
    "When did Caroline go to the LGBTQ support group?",
    "Melanie: We went camping with the kids in the mountains.",
    "x",
    "a much longer text " * 200,  # past the model's 256-token window: truncated the same way
]


FACTS = [
    "Caroline went to the LGBTQ support group on 7 May 2023.",
    "Melanie painted a sunrise over the lake last year.",
    "Jon lost his job as a banker and opened a dance studio.",
    "Gina's clothing store was robbed in January.",
    "The family adopted a golden retriever called Oscar.",
    "Tim is reading a fantasy series about dragons.",
    "Audrey bought new running shoes for the marathon.",
    "Nate's turtle likes to eat strawberries.",
]
QUESTIONS = [
    "Which support group did Caroline attend?",
    "What did Melanie paint?",
    "What business did Jon start after losing his job?",
    "What happened to Gina's store?",
    "What is the name of the dog?",
    "What kind of books does Tim read?",
    "What did Audrey buy for the race?",
    "What does Nate's pet eat?",
]


def test_onnx_vectors_are_the_reference_models_in_any_batching():
    """Texts are encoded in batches of like length; each keeps its place and its vector."""
    from sentence_transformers import SentenceTransformer

    files = ModelFilesSettings()
    model_dir = files.embedding_model_dir()
    encoder = OnnxEncoder(export(model_dir, files.model_cache_dir))
    texts = TEXTS + FACTS + QUESTIONS
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(texts, normalize_embeddings=True)
    together = encoder.encode(texts)
    in_pairs = encoder.encode(texts, batch_size=2)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert together.shape == (len(texts), 384) and together.dtype == np.float32
    for ours in (together, in_pairs, alone):
        assert (ours * reference).sum(axis=1).min() > 0.9999
    assert np.abs(together - alone).max() < 1e-4
    assert encoder.encode([]).shape == (0, 384)


async def test_local_and_triton_embeddings_agree(triton_addr):
    """Float in-process vectors are Triton's; int8 ones are close and rank facts the same way."""
    triton = Embedder(EmbedderSettings(inference_addr=triton_addr))
    async with AsyncExitStack() as stack:
        exact = open_query_embedder(
            stack, QueryEmbedderSettings(inference_addr=triton_addr, query_embed_int8=False)
        )
        int8 = open_query_embedder(stack, QueryEmbedderSettings(inference_addr=triton_addr))
        assert isinstance(exact, LocalEmbedder) and isinstance(int8, LocalEmbedder)
        theirs, facts = await triton.embed(TEXTS + QUESTIONS), await triton.embed(FACTS)
        await triton.close()
        for local, floor in ((exact, 0.999), (int8, 0.97)):
            ours = await local.embed(TEXTS + QUESTIONS)
            assert ours.shape == theirs.shape == (len(TEXTS) + len(QUESTIONS), 384)
            assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
            assert (ours * theirs).sum(axis=1).min() > floor
            nearest = (ours[len(TEXTS) :] @ facts.T).argmax(axis=1)
            assert nearest.tolist() == list(range(len(QUESTIONS)))


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
