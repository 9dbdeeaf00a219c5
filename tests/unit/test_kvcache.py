"""KV caches: encoding, the byte-bounded LRU, and cube-scoped references."""

import pytest
import torch
from transformers import DynamicCache

from services.common.blobs import DirectoryBlobStore
from services.common.errors import InvalidArgument, PermissionDenied
from services.inference.kvcache import (
    ActivationStore,
    HotCaches,
    KvStatus,
    StoredKv,
    encode,
    parse_ref,
    prefix_digest,
    read_metadata,
)


def fake_cache(tokens: int, layers: int = 2) -> DynamicCache:
    cache = DynamicCache()
    for i in range(layers):
        cache.update(torch.randn(1, 3, tokens, 8), torch.randn(1, 3, tokens, 8), i)
    return cache


def prefill_counting(calls: list[int]):
    def prefill(ids: list[int]) -> DynamicCache:
        calls.append(len(ids))
        return fake_cache(len(ids))

    return prefill


def activation_store(root) -> ActivationStore:
    return ActivationStore(
        model_id="m",
        blobs=DirectoryBlobStore(root),
        hot=HotCaches(1 << 20),
        dtype=torch.float16,
        compute_dtype=torch.float32,
    )


def test_encoding_round_trips_at_half_the_bytes():
    cache = fake_cache(10)
    fp32 = encode(cache, torch.float32, {"cube": "a"})
    fp16 = encode(cache, torch.float16, {"cube": "a"})
    assert len(fp16) < 0.55 * len(fp32)
    assert read_metadata(fp16)["cube"] == "a"
    stored = StoredKv.decode(fp16)
    assert stored.tokens == 10
    restored = stored.to_cache(torch.float32)
    assert torch.allclose(restored.layers[1].keys, cache.layers[1].keys, atol=1e-2)
    assert torch.equal(StoredKv.decode(fp32).to_cache(torch.float32).layers[0].values, cache.layers[0].values)


def test_hot_caches_are_bounded_in_bytes_least_recently_used_first():
    entry = StoredKv.decode(encode(fake_cache(4), torch.float16, {}))
    hot = HotCaches(max_bytes=entry.nbytes * 2)
    hot.put("a", entry)
    hot.put("b", entry)
    assert hot.get("a") is not None  # a is now the most recent
    hot.put("c", entry)
    assert hot.get("b") is None and hot.get("a") is not None and hot.get("c") is not None
    assert hot.size_bytes == entry.nbytes * 2
    hot.put("huge", StoredKv.decode(encode(fake_cache(64), torch.float16, {})))
    assert hot.get("huge") is None  # larger than the whole budget: never cached


def test_references_are_scoped_by_cube_and_model(tmp_path):
    calls: list[int] = []
    store = activation_store(tmp_path)
    ids = [5, 6, 7]
    a = store.build("cube-a", ids, prefill_counting(calls), ["cubes/cube-a/memories/x@1"])
    again = store.build("cube-a", ids, prefill_counting(calls), [])
    b = store.build("cube-b", ids, prefill_counting(calls), [])
    assert a.created and not again.created and b.created
    assert calls == [3, 3]  # the repeat in cube-a reused the stored cache
    assert a.ref != b.ref and "/cube-a/" in a.ref and a.ref.endswith(prefix_digest("m", ids) + ".safetensors")
    with pytest.raises(PermissionDenied):
        store.load("cube-b", a.ref, ids)
    with pytest.raises(PermissionDenied):
        store.delete("cube-b", a.ref)
    cache, status = store.load("cube-a", a.ref, ids)
    assert status is KvStatus.HOT and cache.get_seq_length() == 3
    store.hot.discard(a.ref)
    assert store.load("cube-a", a.ref, ids)[1] is KvStatus.LOADED
    assert store.load("cube-a", a.ref, [5, 6, 8]) == (None, KvStatus.MISMATCH)
    store.delete("cube-a", a.ref)
    assert store.load("cube-a", a.ref, ids) == (None, KvStatus.MISSING)


def test_malformed_references_and_cubes_are_rejected(tmp_path):
    store = activation_store(tmp_path)
    for ref in ("kv/m/../x.safetensors", "kv/m/a/123.safetensors", "../../etc/passwd"):
        with pytest.raises(InvalidArgument):
            parse_ref(ref)
    with pytest.raises(InvalidArgument):
        store.build("bad cube", [1], prefill_counting([]), [])
    with pytest.raises(InvalidArgument):
        store.build("a", [], prefill_counting([]), [])
