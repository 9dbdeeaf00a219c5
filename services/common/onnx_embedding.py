"""The sentence-embedding model on ONNX Runtime: one implementation for Triton's ``embed`` and the
scheduler's query embeddings.

``export`` turns a sentence-transformers model directory (BERT-style encoder, mean pooling,
L2 normalisation, as all-MiniLM-L6-v2) into an ONNX graph once, cached by the weights' content.
``OnnxEncoder`` runs it: the same vectors as sentence-transformers (cosine > 0.9999), in a
fraction of torch's per-call overhead, which is what a query's latency is made of.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import Unavailable

log = logging.getLogger(__name__)

GRAPH = "model.onnx"
INT8_GRAPH = "model-int8.onnx"
_COPIED = ("tokenizer.json", "sentence_bert_config.json")


def _digest(model_path: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json"):
        with open(model_path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def export(model_path: Path, cache_dir: Path) -> Path:
    """The ONNX export of ``model_path`` in ``cache_dir``, made once (atomically) if missing."""
    target = cache_dir / f"embedding-onnx-{_digest(model_path)}"
    if (target / GRAPH).exists():
        return target
    import torch
    from transformers import AutoModel

    log.info("exporting %s to ONNX in %s (once)", model_path, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".onnx-"))
    try:

        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()

            def forward(self, input_ids, attention_mask):
                return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        ids = torch.ones((2, 8), dtype=torch.long)
        with torch.no_grad():
            torch.onnx.export(
                Hidden(),
                (ids, torch.ones_like(ids)),
                str(tmp / GRAPH),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask")}
                | {"last_hidden_state": {0: "batch", 1: "tokens"}},
                opset_version=17,
                dynamo=False,
            )
        for name in _COPIED:
            if (model_path / name).exists():
                shutil.copy2(model_path / name, tmp / name)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / GRAPH).exists():
                raise
            shutil.rmtree(tmp)  # another process (inference, scheduler) made it meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def int8_graph(export_dir: Path) -> str:
    """The export's matrix products quantized to int8 (weights per channel, activations per
    call), made once: a query embeds about three times faster, at cosine ~0.99 to the float
    vectors, which leaves retrieval recall where it was (docs/benchmarks.md)."""
    target = export_dir / INT8_GRAPH
    if not target.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log.info("quantizing %s to int8 (once)", export_dir / GRAPH)
        fd, tmp = tempfile.mkstemp(dir=export_dir, prefix=".int8-", suffix=".onnx")
        os.close(fd)
        try:
            quantize_dynamic(
                str(export_dir / GRAPH),
                tmp,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return INT8_GRAPH


# Texts encoded together. A batch is padded to its longest text, and a chat's turns differ a
# lot in length even sorted (a session of LoCoMo holds about 26 turns of 5 to 100 words): the
# model alone took 18.7 s on LoCoMo's texts in batches of 4 against 39.4 s in batches of 64.
BATCH_SIZE = 4


class OnnxEncoder:
    """Embeds texts: tokenize (truncated to the model's max length), encode, mean-pool, normalise.

    ``runs`` batches run at once, each on one thread of its own (``threads`` is then the threads
    of each run; 0 lets ONNX Runtime use every core in each). Runs on one thread each degrade
    one for one when another process takes a core, where one run on every core waits at each
    step for the thread that lost its core: on LoCoMo's texts, 21.4 s beside a process taking a
    third of a core against 26.7 s for one run on both cores (19.2 and 25.3 s quiet)."""

    def __init__(self, export_dir: Path, *, threads: int = 0, graph: str = GRAPH, runs: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        config_path = export_dir / "sentence_bert_config.json"
        max_length = (
            json.loads(config_path.read_text()).get("max_seq_length", 256) if config_path.exists() else 256
        )
        self._tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads would burn the cores other services need between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One session serves every run: ONNX Runtime runs a session from several threads at once.
        self._session = ort.InferenceSession(
            str(export_dir / graph), options, providers=["CPUExecutionProvider"]
        )
        self._runs = ThreadPoolExecutor(max_workers=runs, thread_name_prefix="encode") if runs > 1 else None

    @property
    def dim(self) -> int:
        return int(self._session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str], *, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Texts of like length are encoded together, ``batch_size`` at a time, so that a batch
        is padded to its own longest text, not to the longest of all; the runs take the
        batches as they come free."""
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        vectors = np.empty((len(encodings), self.dim), dtype=np.float32)

        def encode_batch(chosen: list[int]) -> None:
            width = len(encodings[chosen[-1]].ids)
            ids = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            (hidden,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            vectors[chosen] = pooled / np.maximum(norms, 1e-12)

        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if self._runs is None or len(batches) < 2:
            for chosen in batches:
                encode_batch(chosen)
        else:
            for _ in self._runs.map(encode_batch, batches):  # re-raises a batch's error
                pass
        return vectors


class LocalEmbedder:
    """The ``Embedder`` interface in-process: for single queries, where a round trip to Triton
    costs more than the model itself. Calls run on one worker thread, in order."""

    def __init__(self, export_dir: Path, *, dim: int, threads: int, int8: bool = False) -> None:
        graph = int8_graph(export_dir) if int8 else GRAPH
        self._encoder = OnnxEncoder(export_dir, threads=threads, graph=graph)
        self._encoder.encode(["warm-up"])  # the first run sets the session up: not the first query's cost
        self._dim = dim
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-embed")

    @property
    def dim(self) -> int:
        return self._dim

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._encoder.encode, texts
        )
        if vectors.shape != (len(texts), self._dim):
            raise Unavailable("the query embedding model has another dimension", reason="MODEL_BAD_OUTPUT")
        return vectors

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
