"""Folds search accesses (MEMOS_USAGE) into each memory's usage counts, without a new version.

A record names each memory once per use (a name listed twice was used twice).

Never twice: a head remembers the last usage message folded into it (``usage_seq``),
so a redelivered message counts nowhere twice. A message naming a memory the vault has not
applied yet (a rebuild replaying the log) is retried later for that memory alone.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from memos.vault.v1 import commands_pb2
from memos_sdk.wire import SUBJECT_PREFIX, Stream
from services.common import validation
from services.common.bus import VAULT_USAGE_CONSUMER, PullWorker, durable_worker

from . import records
from .index import EdgeIndex
from .records import Role

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


@functools.lru_cache(maxsize=1 << 16)
def _head_id(name: str) -> str:
    return records.head_id(*validation.memory_name(name))


@dataclass
class _Tally:
    count: int = 0
    last_ns: int = 0
    seq: int = 0


class UsageFolder:
    def __init__(
        self,
        js: JetStreamContext,
        index: EdgeIndex,
        *,
        batch_size: int,
        ack_wait_seconds: float,
        linger_seconds: float = 0.0,
        rewind: bool = False,
    ):
        self._linger = linger_seconds
        self._rewind = rewind
        self._js = js
        self._index = index
        self._batch_size = batch_size
        self._ack_wait = ack_wait_seconds

    async def worker(self) -> PullWorker:
        """The worker on the usage stream's durable consumer, rewound for an index rebuild (to
        fold the usage it keeps again; a fold counts each record once, by its sequence)."""
        return await durable_worker(
            self._js,
            Stream.USAGE,
            durable=VAULT_USAGE_CONSUMER,
            filter_subject=f"{SUBJECT_PREFIX}.usage.>",
            handle=self.fold,
            batch_size=self._batch_size,
            name="usage",
            ack_wait_seconds=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=self._batch_size * 8,
            rewind=self._rewind,
            linger_seconds=self._linger,  # a memory used by many searches is rewritten once
        )

    async def fold(self, msgs: list[Msg]) -> None:
        tallies: dict[str, _Tally] = defaultdict(_Tally)
        wanted: list[tuple[Msg, commands_pb2.AccessRecord, set[str]]] = []
        for msg in msgs:
            record = commands_pb2.AccessRecord()
            try:
                record.ParseFromString(msg.data)
                ids = Counter(_head_id(name) for name in record.names)
            except Exception as err:
                log.error("dropping malformed usage record seq=%s: %s", msg.metadata.sequence.stream, err)
                await msg.term()
                continue
            wanted.append((msg, record, ids))
        if not wanted:
            return
        pending: set[int] = set()  # positions in wanted of records to retry
        async with self._index.writing:
            point_ids = sorted(set().union(*(ids for _, _, ids in wanted)))
            heads = await self._index.retrieve(point_ids, fields=("role", *records.USAGE_FIELDS))
            for position, (msg, record, ids) in enumerate(wanted):
                seq = msg.metadata.sequence.stream
                for point_id, uses in ids.items():
                    head = heads.get(point_id)
                    if head is None:
                        pending.add(position)
                    elif head["role"] == Role.HEAD and seq > records.usage_seq(head):
                        tally = tallies[point_id]
                        tally.count += uses
                        tally.seq = max(tally.seq, seq)
                        tally.last_ns = max(tally.last_ns, record.time.ToNanoseconds())
            await self._index.set_fields(
                {
                    point_id: records.more_usage(heads[point_id], tally.count, tally.last_ns, tally.seq)
                    for point_id, tally in tallies.items()
                }
            )
        for position, (msg, _, _) in enumerate(wanted):
            if position in pending:
                await msg.nak(delay=RETRY_SECONDS)
            else:
                await msg.ack()
