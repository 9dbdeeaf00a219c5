"""Generation and KV building on Triton (``generate``, ``kv_build``), reached with tritonclient.

Model errors a caller can fix arrive as ``[REASON] message`` and become the matching MemosError;
anything else means the model is unavailable.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from .errors import InvalidArgument, MemosError, PermissionDenied, Unavailable
from .settings import GeneratorSettings

_CALLER_ERROR = re.compile(r"\[(?P<reason>[A-Z][A-Z0-9_]+)\] (?P<message>.*)", re.DOTALL)
_PERMISSION_REASONS = {"KV_REF_OTHER_CUBE", "ADAPTER_REF_OTHER_CUBE"}


def model_error(err: InferenceServerException, model: str) -> MemosError:
    text = err.message() or str(err)
    match = _CALLER_ERROR.search(text)
    if match is None:
        return Unavailable(f"model {model} failed: {text}", reason="MODEL_UNAVAILABLE")
    kind = PermissionDenied if match["reason"] in _PERMISSION_REASONS else InvalidArgument
    return kind(match["message"].strip(), reason=match["reason"])


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    prefix: str = ""
    cube_id: str = ""
    kv_ref: str = ""
    adapter_ref: str = ""
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ()


@dataclass
class GenerateResult:
    """Filled in by ``Generator.stream`` as the last response arrives."""

    text: str = ""
    finish_reason: str = ""
    kv_status: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    deltas: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KvBuild:
    kv_ref: str
    prefix_tokens: int
    blob_bytes: int
    created: bool


def _input(name: str, value: object, dtype: str) -> triton.InferInput:
    if dtype == "BYTES":
        data = np.array([str(value).encode("utf-8")], dtype=object)
    else:
        data = np.array([value], dtype={"INT32": np.int32, "INT64": np.int64, "FP32": np.float32}[dtype])
    tensor = triton.InferInput(name, [1], dtype)
    tensor.set_data_from_numpy(data)
    return tensor


def _text(result: triton.InferResult, name: str) -> str:
    return result.as_numpy(name).reshape(-1)[0].decode("utf-8")


def _int(result: triton.InferResult, name: str) -> int:
    return int(result.as_numpy(name).reshape(-1)[0])


class Generator:
    def __init__(self, settings: GeneratorSettings) -> None:
        self._settings = settings
        self._client = triton.InferenceServerClient(settings.inference_addr)

    async def stream(self, request: GenerateRequest, result: GenerateResult) -> AsyncIterator[str]:
        """Yields text deltas; ``result`` holds the counts and statuses once the stream ends."""
        inputs = [
            _input("prompt", request.prompt, "BYTES"),
            _input("prefix", request.prefix, "BYTES"),
            _input("cube", request.cube_id, "BYTES"),
            _input("kv_ref", request.kv_ref, "BYTES"),
            _input("adapter_ref", request.adapter_ref, "BYTES"),
            _input("max_new_tokens", request.max_new_tokens, "INT32"),
            _input("temperature", request.temperature, "FP32"),
            _input("top_p", request.top_p, "FP32"),
            _input("seed", request.seed, "INT64"),
            _input("stop", json.dumps(list(request.stop)), "BYTES"),
        ]

        async def requests():
            yield {"model_name": self._settings.generate_model, "inputs": inputs}

        try:
            responses = self._client.stream_infer(
                requests(), stream_timeout=self._settings.generate_timeout_seconds
            )
            async for response, error in responses:
                if error is not None:
                    raise model_error(error, self._settings.generate_model)
                delta = _text(response, "text")
                if delta:
                    result.deltas.append(delta)
                    yield delta
                if bool(response.as_numpy("done").reshape(-1)[0]):
                    result.text = "".join(result.deltas)
                    result.finish_reason = _text(response, "finish_reason")
                    result.kv_status = _text(response, "kv_status")
                    result.prompt_tokens = _int(response, "prompt_tokens")
                    result.cached_tokens = _int(response, "cached_tokens")
                    result.completion_tokens = _int(response, "completion_tokens")
                    return
        except InferenceServerException as err:
            raise model_error(err, self._settings.generate_model) from err
        raise Unavailable("the generation stream ended early", reason="MODEL_STREAM_ENDED")

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        result = GenerateResult()
        async for _ in self.stream(request, result):
            pass
        return result

    async def build_kv(
        self, cube_id: str, prefix: str, memories: Sequence[str], *, replaces: str = ""
    ) -> KvBuild:
        """Build (or find) the KV cache of ``prefix``; ``replaces`` names a cache to delete after."""
        inputs = [
            _input("cube", cube_id, "BYTES"),
            _input("prefix", prefix, "BYTES"),
            _input("memories", json.dumps(list(memories)), "BYTES"),
            _input("replaces", replaces, "BYTES"),
        ]
        try:
            result = await self._client.infer(
                self._settings.kv_build_model, inputs, client_timeout=self._settings.generate_timeout_seconds
            )
        except InferenceServerException as err:
            raise model_error(err, self._settings.kv_build_model) from err
        return KvBuild(
            kv_ref=_text(result, "kv_ref"),
            prefix_tokens=_int(result, "prefix_tokens"),
            blob_bytes=_int(result, "blob_bytes"),
            created=bool(result.as_numpy("created").reshape(-1)[0]),
        )

    async def close(self) -> None:
        await self._client.close()


def open_generator(stack: AsyncExitStack, settings: GeneratorSettings) -> Generator:
    generator = Generator(settings)
    stack.push_async_callback(generator.close)
    return generator
