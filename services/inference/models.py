"""Model functions bound to Triton.

- ``embed``: batched sentence embeddings.
- ``generate``: decoupled (streaming) generation; each response carries a text delta, the last one
  the counts, the finish reason and how the KV reference was used.
- ``kv_build``: prefill a memory prefix and store its KV cache (activation memory).

Errors a caller can fix are raised as ``[REASON] message`` so clients map them to a status
(``services.common.generation`` does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.exceptions import PyTritonBadParameterError
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton

from services.common.errors import MemosError
from services.common.onnx_embedding import OnnxEncoder

from .kvcache import ActivationStore, KvStatus
from .llm import Completion, LanguageModel, Sampling
from .lora import ServedAdapters

log = logging.getLogger(__name__)

EMBED_MODEL = "embed"
GENERATE_MODEL = "generate"
KV_BUILD_MODEL = "kv_build"


def bind_embedder(
    triton: Triton, export_dir: Path, *, runs: int, max_batch_size: int, queue_delay_us: int
) -> int:
    """Bind ``embed``: input ``text`` (BYTES, UTF-8), output ``embedding`` (FP32, L2-normalised).

    The model runs on ONNX Runtime, whose idle threads sleep (torch's spin, and when other
    services take a core the whole batch waits on the thread that lost it: LoCoMo's texts took
    26% longer beside a process using a quarter of a core, against 10% on ONNX Runtime), in
    ``runs`` single-threaded runs at once (onnx_embedding.OnnxEncoder).

    Two model instances share those runs: the last batches of one request leave a run idle,
    and another request's batches fill it. With two sessions written at once, LoCoMo's ingest
    left 1.8% of the cores idle against 8.6% with one instance."""
    encoder = OnnxEncoder(export_dir, threads=1, runs=runs)
    dim = encoder.dim

    @batch
    def embed(text: np.ndarray) -> dict[str, np.ndarray]:
        return {"embedding": encoder.encode([row[0].decode("utf-8", errors="replace") for row in text])}

    triton.bind(
        model_name=EMBED_MODEL,
        infer_func=[embed, embed],  # two instances, one encoder
        inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
        outputs=[Tensor(name="embedding", dtype=np.float32, shape=(dim,))],
        config=ModelConfig(
            max_batch_size=max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us),
        ),
        strict=True,
    )
    log.info("bound model %s from %s (dim %d, ONNX Runtime)", EMBED_MODEL, export_dir, dim)
    return dim


def _text(request, name: str, default: str = "") -> str:
    if name not in request.keys():
        return default
    value = request[name].reshape(-1)
    return value[0].decode("utf-8") if value.size else default


def _number(request, name: str, default: float) -> float:
    if name not in request.keys():
        return default
    value = request[name].reshape(-1)
    return value[0].item() if value.size else default


def _caller_error(err: MemosError) -> PyTritonBadParameterError:
    return PyTritonBadParameterError(f"[{err.reason}] {err.message}")


def _bytes_out(value: str) -> np.ndarray:
    return np.array([value.encode("utf-8")], dtype=object)


def bind_generator(
    triton: Triton, lm: LanguageModel, activations: ActivationStore, adapters: ServedAdapters
) -> None:
    """Bind ``generate``: inputs ``prompt`` and optional ``prefix``, ``cube``, ``kv_ref``,
    ``adapter_ref``, ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` (a JSON list)."""

    def generate(requests):
        for request in requests:
            try:
                yield from _generate_one(request)
            except MemosError as err:
                raise _caller_error(err) from None

    def _generate_one(request):
        sampling = Sampling(
            max_new_tokens=int(_number(request, "max_new_tokens", 128)),
            temperature=float(_number(request, "temperature", 0.0)),
            top_p=float(_number(request, "top_p", 1.0)),
            seed=int(_number(request, "seed", 0)),
            stop=tuple(json.loads(_text(request, "stop", "[]"))),
        ).check()
        prefix_ids, prompt_ids = lm.tokenize(_text(request, "prefix")), lm.tokenize(_text(request, "prompt"))
        ref, cache, status = _text(request, "kv_ref"), None, KvStatus.NONE
        if ref:
            cache, status = activations.load(_text(request, "cube"), ref, prefix_ids)
        done = Completion()
        with adapters.applied(_text(request, "cube"), _text(request, "adapter_ref")):
            for delta in lm.generate(prefix_ids, prompt_ids, sampling, cache=cache, completion=done):
                yield [_step(delta)]
        yield [
            _step(
                "",
                done=True,
                finish_reason=done.finish_reason,
                kv_status=status.value,
                prompt_tokens=done.prompt_tokens,
                cached_tokens=done.cached_tokens,
                completion_tokens=len(done.token_ids),
            )
        ]

    def _step(
        text: str,
        *,
        done: bool = False,
        finish_reason: str = "",
        kv_status: str = "",
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> dict:
        return {
            "text": _bytes_out(text),
            "done": np.array([done]),
            "finish_reason": _bytes_out(finish_reason),
            "kv_status": _bytes_out(kv_status),
            "prompt_tokens": np.array([prompt_tokens], dtype=np.int32),
            "cached_tokens": np.array([cached_tokens], dtype=np.int32),
            "completion_tokens": np.array([completion_tokens], dtype=np.int32),
        }

    optional_text = ("prefix", "cube", "kv_ref", "adapter_ref", "stop")
    triton.bind(
        model_name=GENERATE_MODEL,
        infer_func=generate,
        inputs=[Tensor(name="prompt", dtype=bytes, shape=(1,))]
        + [Tensor(name=name, dtype=bytes, shape=(1,), optional=True) for name in optional_text]
        + [
            Tensor(name="max_new_tokens", dtype=np.int32, shape=(1,), optional=True),
            Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
            Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
            Tensor(name="seed", dtype=np.int64, shape=(1,), optional=True),
        ],
        outputs=[
            Tensor(name="text", dtype=bytes, shape=(1,)),
            Tensor(name="done", dtype=np.bool_, shape=(1,)),
            Tensor(name="finish_reason", dtype=bytes, shape=(1,)),
            Tensor(name="kv_status", dtype=bytes, shape=(1,)),
            Tensor(name="prompt_tokens", dtype=np.int32, shape=(1,)),
            Tensor(name="cached_tokens", dtype=np.int32, shape=(1,)),
            Tensor(name="completion_tokens", dtype=np.int32, shape=(1,)),
        ],
        config=ModelConfig(batching=False, decoupled=True),
        strict=True,
    )
    log.info("bound model %s (%s)", GENERATE_MODEL, lm.model_id)


def bind_kv_builder(triton: Triton, lm: LanguageModel, activations: ActivationStore) -> None:
    """Bind ``kv_build``: inputs ``cube``, ``prefix``, ``memories`` (a JSON list of the source
    memory names and versions) and ``replaces`` (a cache of the cube to delete once this one is
    stored); outputs ``kv_ref``, ``prefix_tokens``, ``blob_bytes``, ``created``."""

    def kv_build(requests):
        responses = []
        for request in requests:
            try:
                prefix_ids = lm.tokenize(_text(request, "prefix"))
                if len(prefix_ids) >= lm.max_context:
                    raise MemosError(
                        f"the prefix has {len(prefix_ids)} tokens; the model has {lm.max_context}",
                        reason="CONTEXT_TOO_LONG",
                    )
                cube_id = _text(request, "cube")
                built = activations.build(
                    cube_id, prefix_ids, lm.prefill, json.loads(_text(request, "memories", "[]"))
                )
                replaces = _text(request, "replaces")
                if replaces and replaces != built.ref:
                    activations.delete(cube_id, replaces)
            except MemosError as err:
                raise _caller_error(err) from None
            responses.append(
                {
                    "kv_ref": _bytes_out(built.ref),
                    "prefix_tokens": np.array([built.tokens], dtype=np.int32),
                    "blob_bytes": np.array([built.blob_bytes], dtype=np.int64),
                    "created": np.array([built.created]),
                }
            )
        return responses

    triton.bind(
        model_name=KV_BUILD_MODEL,
        infer_func=kv_build,
        inputs=[
            Tensor(name="cube", dtype=bytes, shape=(1,)),
            Tensor(name="prefix", dtype=bytes, shape=(1,)),
            Tensor(name="memories", dtype=bytes, shape=(1,), optional=True),
            Tensor(name="replaces", dtype=bytes, shape=(1,), optional=True),
        ],
        outputs=[
            Tensor(name="kv_ref", dtype=bytes, shape=(1,)),
            Tensor(name="prefix_tokens", dtype=np.int32, shape=(1,)),
            Tensor(name="blob_bytes", dtype=np.int64, shape=(1,)),
            Tensor(name="created", dtype=np.bool_, shape=(1,)),
        ],
        config=ModelConfig(batching=False),
        strict=True,
    )
    log.info("bound model %s", KV_BUILD_MODEL)
