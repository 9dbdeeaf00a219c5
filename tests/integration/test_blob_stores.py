"""The object-store port: the same cases against every backend (a directory, and S3 on a real server)."""

import uuid

import pytest
from pydantic import SecretStr

from services.common.blobs import BlobStore, open_blob_store
from services.common.errors import InvalidArgument, NotFound
from services.common.settings import BlobStoreSettings


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "directory":
        return open_blob_store(BlobStoreSettings(blob_store_url=f"file://{tmp_path}/blobs"))
    server = request.getfixturevalue("s3_server")
    return open_blob_store(
        BlobStoreSettings(
            blob_store_url=f"s3://memos-test/{uuid.uuid4().hex[:8]}",
            s3_endpoint=server.endpoint,
            s3_access_key=SecretStr(server.access_key),
            s3_secret_key=SecretStr(server.secret_key),
            s3_secure=False,
        )
    )


def test_put_get_stat_list_delete(store: BlobStore):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    store.put("kv/m/cube-a/one.safetensors", data)
    store.put("kv/m/cube-b/two.safetensors", b"two")
    assert store.get("kv/m/cube-a/one.safetensors") == data
    assert store.stat("kv/m/cube-a/one.safetensors").size_bytes == len(data)
    assert store.stat("kv/m/cube-a/none.safetensors") is None
    assert [b.key for b in store.list("kv/m/cube-b/")] == ["kv/m/cube-b/two.safetensors"]
    assert sorted(b.key for b in store.list()) == [
        "kv/m/cube-a/one.safetensors",
        "kv/m/cube-b/two.safetensors",
    ]
    store.put("kv/m/cube-b/two.safetensors", b"second")  # overwrite is whole
    assert store.get("kv/m/cube-b/two.safetensors") == b"second"
    store.delete("kv/m/cube-a/one.safetensors")
    store.delete("kv/m/cube-a/one.safetensors")  # deleting twice is fine
    with pytest.raises(NotFound):
        store.get("kv/m/cube-a/one.safetensors")


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a//b", "a/../b", "", "a b"])
def test_malformed_keys_are_rejected(store: BlobStore, key: str):
    with pytest.raises(InvalidArgument):
        store.put(key, b"x")


def test_unknown_scheme_is_rejected():
    with pytest.raises(InvalidArgument):
        open_blob_store(BlobStoreSettings(blob_store_url="ftp://x/y"))
    with pytest.raises(InvalidArgument):
        open_blob_store(BlobStoreSettings(blob_store_url="s3://bucket/prefix"))  # no endpoint
