"""The mesh's JetStream key-value buckets, each made with one configuration wherever it is opened."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from memos_sdk.wire import Bucket

BUCKETS = {
    Bucket.ACTIVATION: KeyValueConfig(bucket=Bucket.ACTIVATION, history=1, storage=StorageType.FILE),
    Bucket.POLICIES: KeyValueConfig(bucket=Bucket.POLICIES, history=5, storage=StorageType.FILE),
    Bucket.OPERATIONS: KeyValueConfig(
        bucket=Bucket.OPERATIONS, history=1, storage=StorageType.FILE, ttl=30 * 24 * 3600
    ),
    Bucket.ACL: KeyValueConfig(bucket=Bucket.ACL, history=5, storage=StorageType.FILE),
    Bucket.PRINCIPALS: KeyValueConfig(bucket=Bucket.PRINCIPALS, history=1, storage=StorageType.FILE),
    Bucket.SESSION_NUMBERS: KeyValueConfig(
        bucket=Bucket.SESSION_NUMBERS, history=1, storage=StorageType.FILE
    ),
    # Long enough for any retry of a request; the write log's duplicate window is far shorter.
    Bucket.NUMBER_GRANTS: KeyValueConfig(
        bucket=Bucket.NUMBER_GRANTS, history=1, storage=StorageType.FILE, ttl=24 * 3600
    ),
}


async def open_bucket(js: JetStreamContext, name: Bucket) -> KeyValue:
    """The bucket, made on first use."""
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(BUCKETS[name])
