"""NATS JetStream: connection, the mesh's streams, publishing with dedup, waiting for the vault."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from memos_sdk.wire import SUBJECT_PREFIX, Stream

from .errors import DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)

VAULT_CONSUMER = "vault"
VAULT_USAGE_CONSUMER = "vault-usage"
DUPLICATE_WINDOW_SECONDS = 120.0

STREAMS = {
    # The write log is the system of record: kept (limits retention, no age limit) so a vault
    # can rebuild its index by replaying it.
    Stream.WRITES: StreamConfig(
        name=Stream.WRITES,
        subjects=[f"{SUBJECT_PREFIX}.writes.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
    ),
    Stream.EVENTS: StreamConfig(
        name=Stream.EVENTS,
        subjects=[f"{SUBJECT_PREFIX}.events.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=7 * 24 * 3600.0,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    ),
    # Usage is derived and loss-tolerant: a day is kept, for a vault that rebuilds its index.
    Stream.USAGE: StreamConfig(
        name=Stream.USAGE,
        subjects=[f"{SUBJECT_PREFIX}.usage.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=24 * 3600.0,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    ),
    # Jobs wait until a worker acks them (work-queue retention); one unacked in time (a worker
    # that crashed) is delivered again.
    Stream.JOBS: StreamConfig(
        name=Stream.JOBS,
        subjects=[f"{SUBJECT_PREFIX}.jobs.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    ),
    # Access decisions wait here (each taken once) until governance appends them to the chain.
    Stream.AUDIT_INBOX: StreamConfig(
        name=Stream.AUDIT_INBOX,
        subjects=[f"{SUBJECT_PREFIX}.audit-inbox.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    ),
    # Subject keys (sealing.py): the last message of each subject is the key; secure deletes
    # must be allowed, so that erasing a subject can overwrite its key.
    Stream.SUBJECT_KEYS: StreamConfig(
        name=Stream.SUBJECT_KEYS,
        subjects=[f"{SUBJECT_PREFIX}.subject-keys.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=1,
        allow_direct=True,
    ),
    # The audit log: kept for good, and the server refuses to delete or purge any of it.
    Stream.AUDIT: StreamConfig(
        name=Stream.AUDIT,
        subjects=[f"{SUBJECT_PREFIX}.audit.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        deny_delete=True,
        deny_purge=True,
    ),
}


async def connect(url: str, name: str) -> NATS:
    """Connect, retrying for a while: services may start before the bus is up."""
    try:
        return await nats.connect(
            url,
            name=f"memos-{name}",
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
        )
    except Exception as err:  # nats raises several unrelated types here
        raise Unavailable(f"cannot connect to NATS at {url}: {err}", reason="BUS_UNAVAILABLE") from err


async def open_jetstream(stack: AsyncExitStack, url: str, name: str) -> JetStreamContext:
    """Connect (drained when ``stack`` closes) and make sure the mesh's streams exist."""
    nc = await connect(url, name)
    stack.push_async_callback(nc.drain)
    js = nc.jetstream()
    await ensure_streams(js)
    return js


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the mesh's streams, or bring an existing one's settings up to date."""
    for config in STREAMS.values():
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
        else:
            await js.update_stream(config)


async def publish(
    js: JetStreamContext, subject: str, data: bytes, *, msg_id: str, headers: Mapping[str, str] | None = None
) -> tuple[int, bool]:
    """Publish once (deduplicated by msg_id) and wait for the stream's ack: (sequence, was_duplicate)."""
    all_headers = {"Nats-Msg-Id": msg_id, **(headers or {})}
    try:
        ack = await js.publish(subject, data, headers=all_headers, timeout=10)
    except Exception as err:
        raise Unavailable(f"write log did not acknowledge: {err}", reason="BUS_UNAVAILABLE") from err
    return ack.seq, bool(ack.duplicate)


async def wait_applied(js: JetStreamContext, sequence: int, *, timeout_seconds: float) -> None:
    """Wait until the vault has applied (acked) every write up to ``sequence``."""
    deadline = time.monotonic() + timeout_seconds
    delay = 0.005
    while True:
        try:
            info = await js.consumer_info(Stream.WRITES, VAULT_CONSUMER)
            if info.ack_floor.stream_seq >= sequence:
                return
        except NotFoundError:
            pass  # no vault has started yet
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                f"the vault has not applied write {sequence} within {timeout_seconds:.0f}s; it is durable and will be",
                reason="APPLY_PENDING",
                log_sequence=sequence,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


class PullWorker:
    """Runs ``handle`` on batches of a bound pull subscription until stopped.

    ``stop`` lets the batch in flight finish (and ack) before it returns, then unsubscribes:
    a pull subscription left open makes the connection's drain wait forever.
    """

    def __init__(
        self,
        sub: JetStreamContext.PullSubscription,
        handle,
        *,
        batch_size: int,
        name: str,
        linger_seconds: float = 0.0,
    ) -> None:
        self._sub = sub
        self._linger = linger_seconds
        self._handle = handle
        self._batch_size = batch_size
        self._name = name
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(self._batch_size, timeout=1.0)
            except TimeoutError:
                continue
            except Exception as err:  # the bus reconnects by itself; don't spin
                if self._stopping.is_set():
                    break
                log.warning("%s: fetch failed: %s", self._name, err)
                await asyncio.sleep(0.5)
                continue
            self._idle.clear()
            try:
                await self._handle(msgs)
            finally:
                self._idle.set()
            if self._linger and len(msgs) < self._batch_size:
                # Let more gather before the next batch: one handling of many costs less.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._linger)

    async def stop(self) -> None:
        self._stopping.set()
        await self._idle.wait()
        await self._sub.unsubscribe()


async def durable_worker(
    js: JetStreamContext,
    stream: Stream,
    *,
    durable: str,
    filter_subject: str | Sequence[str],
    handle,
    batch_size: int,
    name: str,
    ack_wait_seconds: float = 30.0,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    max_deliver: int | None = None,
    max_ack_pending: int | None = None,
    rewind: bool = False,
    linger_seconds: float = 0.0,
) -> PullWorker:
    """A worker on a durable pull consumer with explicit acks (created, or updated to ``config``).

    ``filter_subject``: one subject or several (a message on any of them is delivered).
    ``rewind`` deletes the consumer first, so it delivers the stream from the start again.
    ``linger_seconds``: after a batch that was not full, wait this long before fetching again.
    """
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=deliver_policy,
        **(
            {"filter_subject": filter_subject}
            if isinstance(filter_subject, str)
            else {"filter_subjects": list(filter_subject)}
        ),
        ack_wait=ack_wait_seconds,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )
    if rewind:
        try:
            await js.delete_consumer(stream, durable)
            log.warning("%s: replaying %s from the start", name, stream)
        except NotFoundError:
            pass
    await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    return PullWorker(sub, handle, batch_size=batch_size, name=name, linger_seconds=linger_seconds)
