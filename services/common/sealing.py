"""Payloads sealed with per-subject keys, so that erasing a subject is destroying its keys.

A subject key is an AES-256-GCM data key for one (cube, principal): what principal P wrote into
cube C (its write commands on the log, its records in the index) is sealed with key ``C.P``.
Erasing cube C destroys ``C.*``; erasing principal P destroys ``*.P``. Each key is the one message
of its subject on the MEMOS_SUBJECT_KEYS stream. Destroying it is JetStream's secure delete (the
stored bytes are overwritten) followed by an empty tombstone that tells every service's mirror,
so neither the key nor what it sealed can be read back: crypto-shredding (the sealed bytes may
stay on disk, unreadable).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
from contextlib import AsyncExitStack

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from memos_sdk.wire import SUBJECT_PREFIX, Stream

from .tasks import follow_forever, run_until_closed

log = logging.getLogger(__name__)

NO_PRINCIPAL = "_"
NONCE_BYTES = 12
KEY_SUBJECT = f"{SUBJECT_PREFIX}.subject-keys"


def subject_key_id(cube_id: str, principal: str) -> str:
    return f"{cube_id}.{principal.removeprefix('principals/') or NO_PRINCIPAL}"


class Erased(Exception):
    """The key that sealed a payload was destroyed: the payload is gone for good."""


class SubjectKeys:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._keys: dict[str, bytes] = {}
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, stack: AsyncExitStack, js: JetStreamContext) -> SubjectKeys:
        """Keys mirrored from now until ``stack`` closes; returns once the mirror has caught up.
        (The stream itself is made with the others: bus.ensure_streams.)"""
        keys = cls(js)
        run_until_closed(stack, keys.run, "subject-keys")
        await keys.ready()
        return keys

    async def run(self) -> None:
        """Mirror the keys (the last message of each subject) until cancelled."""
        await follow_forever("subject key mirror", self._follow)

    async def _follow(self) -> None:
        sub = await self._js.subscribe(
            f"{KEY_SUBJECT}.>",
            stream=Stream.SUBJECT_KEYS,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            info = await self._js.stream_info(Stream.SUBJECT_KEYS)
            if not info.state.messages:
                self._ready.set()
            async for msg in sub.messages:
                key_id = msg.subject[len(KEY_SUBJECT) + 1 :]
                if msg.data:
                    self._keys[key_id] = msg.data
                else:
                    self._keys.pop(key_id, None)
                if msg.metadata.num_pending == 0:
                    self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def ready(self, wait_seconds: float = 10.0) -> None:
        await asyncio.wait_for(self._ready.wait(), wait_seconds)

    def cached(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    async def _stored(self, key_id: str) -> tuple[bytes, int] | None:
        try:
            msg = await self._js.get_msg(Stream.SUBJECT_KEYS, subject=f"{KEY_SUBJECT}.{key_id}")
        except NotFoundError:
            return None
        return (msg.data or b"", msg.seq)

    async def key(self, key_id: str, *, create: bool = False) -> bytes | None:
        """The key, made on first use when ``create``; None when it does not exist (or was destroyed)."""
        known = self._keys.get(key_id)
        if known is not None:
            return known
        async with self._lock:
            stored = await self._stored(key_id)
            if stored is not None and stored[0]:
                self._keys[key_id] = stored[0]
                return stored[0]
            if not create:
                return None
            value = AESGCM.generate_key(bit_length=256)
            # Only the first writer of a key wins; a second one reads the first's.
            expected = str(stored[1]) if stored is not None else "0"
            try:
                await self._js.publish(
                    f"{KEY_SUBJECT}.{key_id}",
                    value,
                    headers={"Nats-Expected-Last-Subject-Sequence": expected},
                )
            except Exception:
                stored = await self._stored(key_id)
                if stored is None or not stored[0]:
                    raise
                value = stored[0]
            self._keys[key_id] = value
            return value

    async def seal(self, key_id: str, data: bytes) -> bytes:
        key = await self.key(key_id, create=True)
        return seal(key_id, key, data)

    async def unseal(self, key_id: str, sealed: bytes) -> bytes:
        key = await self.key(key_id)
        if key is None:
            raise Erased(key_id)
        return unseal(key_id, key, sealed)

    async def matching(self, pattern: str) -> list[str]:
        """Ids of the live keys matching ``pattern`` (``cube.*`` or ``*.principal``)."""
        info = await self._js.stream_info(Stream.SUBJECT_KEYS, subjects_filter=f"{KEY_SUBJECT}.{pattern}")
        found = []
        for subject in info.state.subjects or {}:
            key_id = subject[len(KEY_SUBJECT) + 1 :]
            stored = await self._stored(key_id)
            if stored is not None and stored[0] and fnmatch.fnmatchcase(key_id, pattern):
                found.append(key_id)
        return sorted(found)

    async def destroy_ids(self, key_ids: list[str]) -> list[str]:
        """Destroy these keys: their stored bytes are overwritten (JetStream's secure delete), then
        an empty tombstone tells every mirror. Answers the ids that were there."""
        destroyed = []
        for key_id in key_ids:
            stored = await self._stored(key_id)
            if stored is None or not stored[0]:
                continue
            await self._js.delete_msg(Stream.SUBJECT_KEYS, stored[1])
            await self._js.publish(f"{KEY_SUBJECT}.{key_id}", b"")
            self._keys.pop(key_id, None)
            destroyed.append(key_id)
            log.info("destroyed subject key %s", key_id)
        return destroyed


def seal(key_id: str, key: bytes, data: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, data, key_id.encode())


def unseal(key_id: str, key: bytes, sealed: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], key_id.encode())
    except InvalidTag as err:
        raise Erased(f"{key_id}: the payload does not open with its key") from err
