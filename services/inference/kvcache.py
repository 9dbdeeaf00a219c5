"""Activation memory: KV caches of memory prefixes, as blobs in the object store and hot in memory.

A cache is keyed ``kv/<model>/<cube>/<digest>.safetensors`` where the digest hashes the model id
and the prefix token ids: the same memory prefix gives the same key, a different model or cube a
different one. The cube is part of the key, so one tenant's cache is never found, used or timed
through another tenant's request: a lookup only ever sees keys of the cube it names.

Blobs are safetensors (one K and one V tensor a layer, stored as ``kv_dtype``) with the
model, cube, token count, digest and the manifest of source memories as metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import DynamicCache

from services.common import validation
from services.common.blobs import BlobStore
from services.common.errors import InvalidArgument, NotFound, PermissionDenied

log = logging.getLogger(__name__)

KV_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REF = re.compile(
    r"^kv/(?P<model>[A-Za-z0-9._-]+)/(?P<cube>[A-Za-z0-9_-]+)/(?P<digest>[0-9a-f]{64})\.safetensors$"
)


class KvStatus(StrEnum):
    """How a generation used the KV reference it was given."""

    NONE = "none"  # no reference: the prefix was prefilled as text
    HOT = "hot"  # found in the inference process's memory
    LOADED = "loaded"  # read from the object store
    MISSING = "missing"  # the blob is gone: prefilled as text
    MISMATCH = "mismatch"  # the blob is for other tokens than this prefix: prefilled as text


def prefix_digest(model_id: str, token_ids: list[int]) -> str:
    h = hashlib.sha256(model_id.encode())
    h.update(b"\0")
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.hexdigest()


def kv_ref(model_id: str, cube_id: str, digest: str) -> str:
    return f"kv/{model_id}/{cube_id}/{digest}.safetensors"


def parse_ref(ref: str) -> tuple[str, str, str]:
    match = _REF.match(ref)
    if not match:
        raise InvalidArgument(f"kv_ref {ref[:100]!r} is malformed", reason="MALFORMED_KV_REF")
    return match["model"], match["cube"], match["digest"]


def encode(cache: DynamicCache, dtype: torch.dtype, metadata: dict[str, str]) -> bytes:
    tensors = {}
    for i, layer in enumerate(cache.layers):
        tensors[f"k{i}"] = layer.keys[0].to("cpu", dtype).contiguous()
        tensors[f"v{i}"] = layer.values[0].to("cpu", dtype).contiguous()
    return save_tensors(tensors, metadata=metadata)


def read_metadata(blob: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + size]).get("__metadata__", {})


@dataclass(frozen=True)
class StoredKv:
    """A decoded cache as stored (compact dtype); ``to_cache`` makes a fresh working copy."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    tokens: int
    nbytes: int

    @classmethod
    def decode(cls, blob: bytes) -> StoredKv:
        tensors = load_tensors(blob)
        layers = tuple((tensors[f"k{i}"], tensors[f"v{i}"]) for i in range(len(tensors) // 2))
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        return cls(layers, layers[0][0].shape[1] if layers else 0, nbytes)

    def to_cache(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> DynamicCache:
        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.to(device, dtype).unsqueeze(0), v.to(device, dtype).unsqueeze(0), i)
        return cache


class HotCaches:
    """A least-recently-used set of decoded caches, bounded in bytes (not entries)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, StoredKv] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> StoredKv | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: StoredKv) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes


@dataclass(frozen=True)
class Built:
    ref: str
    tokens: int
    blob_bytes: int
    created: bool  # False when the same prefix was already stored


class ActivationStore:
    """Builds, stores and finds the KV caches of one model."""

    def __init__(
        self,
        *,
        model_id: str,
        blobs: BlobStore,
        hot: HotCaches,
        dtype: torch.dtype,
        compute_dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model_id = model_id
        self.device = device
        self.blobs = blobs
        self.hot = hot
        self.dtype = dtype
        self.compute_dtype = compute_dtype

    def build(self, cube_id: str, prefix_ids: list[int], prefill, manifest: list[str]) -> Built:
        """Prefills ``prefix_ids`` (with ``prefill``) unless this exact prefix is already stored."""
        validation.cube_id(cube_id, "cube")
        if not prefix_ids:
            raise InvalidArgument("the memory prefix is empty", reason="EMPTY_PREFIX")
        digest = prefix_digest(self.model_id, prefix_ids)
        ref = kv_ref(self.model_id, cube_id, digest)
        existing = self.blobs.stat(ref)
        if existing is not None:
            return Built(ref, len(prefix_ids), existing.size_bytes, created=False)
        metadata = {
            "model": self.model_id,
            "cube": cube_id,
            "tokens": str(len(prefix_ids)),
            "digest": digest,
            "dtype": str(self.dtype).removeprefix("torch."),
            "memories": json.dumps(manifest),
        }
        blob = encode(prefill(prefix_ids), self.dtype, metadata)
        self.blobs.put(ref, blob)
        self.hot.put(ref, StoredKv.decode(blob))
        log.info("built %s (%d tokens, %d bytes)", ref, len(prefix_ids), len(blob))
        return Built(ref, len(prefix_ids), len(blob), created=True)

    def load(self, cube_id: str, ref: str, prefix_ids: list[int]) -> tuple[DynamicCache | None, KvStatus]:
        """The cache behind ``ref`` for this cube's prefix, or None and the reason it cannot be used."""
        model_id, digest = self._own(cube_id, ref)
        if model_id != self.model_id or digest != prefix_digest(self.model_id, prefix_ids):
            return None, KvStatus.MISMATCH
        entry, status = self.hot.get(ref), KvStatus.HOT
        if entry is None:
            try:
                entry, status = StoredKv.decode(self.blobs.get(ref)), KvStatus.LOADED
            except NotFound:
                return None, KvStatus.MISSING
            self.hot.put(ref, entry)
        return entry.to_cache(self.compute_dtype, self.device), status

    def delete(self, cube_id: str, ref: str) -> None:
        self._own(cube_id, ref)
        self.hot.discard(ref)
        self.blobs.delete(ref)

    @staticmethod
    def _own(cube_id: str, ref: str) -> tuple[str, str]:
        """(model, digest) of ``ref``, which must belong to ``cube_id``."""
        validation.cube_id(cube_id, "cube")
        model_id, ref_cube, digest = parse_ref(ref)
        if ref_cube != cube_id:
            raise PermissionDenied("kv_ref belongs to another cube", reason="KV_REF_OTHER_CUBE")
        return model_id, digest
