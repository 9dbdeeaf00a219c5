"""Convert the models once into the model cache (`make setup` runs it): the language model from GGUF to
safetensors for the inference service, the embedding model to ONNX for Triton's embed model (and its int8
form for the scheduler's query embeddings)."""

from __future__ import annotations

import logging
import sys

from services.common import onnx_embedding

from .llm import materialize, packaged_model_path
from .settings import InferenceSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = InferenceSettings()
    source = settings.llm_model_path or packaged_model_path()
    target = materialize(source, settings.model_cache_dir)
    print(f"language model ready: {target}")
    exported = onnx_embedding.export(settings.embedding_model_dir(), settings.model_cache_dir)
    print(f"embedding model ready: {exported} ({onnx_embedding.int8_graph(exported)} beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
