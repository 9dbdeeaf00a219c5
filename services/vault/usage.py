"""Usage counts: how often, and when last, searches used each memory (MEMOS_USAGE). The
lifecycle's decay and promotion rules read them from every memory the vault returns.

The counts live in a table beside the index (SQLite in the vault's data directory, mirrored in
memory), by memory name, not in the index points' payloads: rewriting a point for a use cost
about 60 µs of engine time, as much as the search that made the use, on the core the next
search needs; a row costs about 4, a fold being one transaction (docs/benchmarks.md). The table
also outlives index rebuilds.

Never twice: a row remembers the last usage message folded into it (``seq``), so a redelivered
message counts nowhere twice. Only live memories have rows: a memory's first use is checked
against the index, and the applier drops the rows of the memories it deletes or erases, under
the index's write lock as the folds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2
from memos_sdk.wire import SUBJECT_PREFIX, Stream
from services.common import validation
from services.common.bus import VAULT_USAGE_CONSUMER, PullWorker, durable_worker

from . import records
from .index import EdgeIndex
from .records import Role

log = logging.getLogger(__name__)

USAGE_FILE = "usage.sqlite3"


class Use(NamedTuple):
    count: int
    last_ns: int  # the last use, in nanoseconds since the epoch
    seq: int  # the last usage message folded in


class UsageTable:
    """Each used memory's counts by name. Reads come from memory; writes go to SQLite first,
    one transaction each, from one task at a time (the index's write lock)."""

    def __init__(self, db: sqlite3.Connection, rows: dict[str, Use], *, created: bool) -> None:
        self._db = db
        self._rows = rows
        self.created = created  # no table was there: the usage stream is folded from its start

    @classmethod
    def open(cls, path: Path) -> UsageTable:
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a folded message is acked: its count must last
        db.execute(
            "CREATE TABLE IF NOT EXISTS usage (name TEXT PRIMARY KEY, count INTEGER NOT NULL,"
            " last_ns INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID"
        )
        rows = {name: Use(*use) for name, *use in db.execute("SELECT name, count, last_ns, seq FROM usage")}
        return cls(db, rows, created=created)

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, name: str) -> Use | None:
        return self._rows.get(name)

    def fill(self, memory: memory_pb2.Memory) -> None:
        """``memory.usage`` from its row (none: never used)."""
        use = self._rows.get(memory.name)
        if use is not None:
            usage = memory.usage
            usage.access_count = use.count
            if use.last_ns:  # set directly: FromNanoseconds is Python, and this runs for every result
                at = usage.last_access_time
                at.seconds, at.nanos = divmod(use.last_ns, 1_000_000_000)

    def put(self, rows: Mapping[str, Use]) -> None:
        if rows:
            self._transaction(
                "INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?)", [(n, *u) for n, u in rows.items()]
            )
            self._rows.update(rows)

    def drop(self, names: Iterable[str]) -> None:
        names = [n for n in names if n in self._rows]
        if names:
            self._transaction("DELETE FROM usage WHERE name = ?", [(n,) for n in names])
            for name in names:
                del self._rows[name]

    def _transaction(self, statement: str, rows: list[tuple]) -> None:
        """``statement`` for every row, all or none (the connection autocommits otherwise)."""
        self._db.execute("BEGIN")
        try:
            self._db.executemany(statement, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def names_in(self, cube_id: str) -> list[str]:
        prefix = f"cubes/{cube_id}/memories/"
        return [name for name in self._rows if name.startswith(prefix)]

    def take_missing(self, rows: Mapping[str, tuple[int, int, int]]) -> int:
        """Adds the rows of names it has none for (the counts an index of an older layout kept
        in its payloads); returns how many."""
        missing = {name: Use(*use) for name, use in rows.items() if name not in self._rows}
        self.put(missing)
        return len(missing)


async def live(index: EdgeIndex, names: Iterable[str]) -> set[str]:
    """Those of ``names`` whose memory has a live head in ``index``."""
    ids = {records.head_id(*validation.memory_name(name)): name for name in names}
    if not ids:
        return set()
    heads = await index.retrieve(list(ids), fields=("role",))
    return {ids[pid] for pid, fields in heads.items() if fields.get("role") == Role.HEAD}


async def forget_dead(index: EdgeIndex, table: UsageTable, cube_id: str) -> None:
    """Drops the rows of the cube's memories that have no live head (after an erasure)."""
    names = table.names_in(cube_id)
    dead = set(names) - await live(index, names)
    await asyncio.to_thread(table.drop, dead)


class UsageFolder:
    def __init__(
        self,
        js: JetStreamContext,
        index: EdgeIndex,
        table: UsageTable,
        *,
        batch_size: int,
        ack_wait_seconds: float,
        linger_seconds: float = 0.0,
        rows_per_transaction: int = 512,
    ):
        self._linger = linger_seconds
        self._rows_per_transaction = rows_per_transaction
        self._js = js
        self._index = index
        self._table = table
        self._batch_size = batch_size
        self._ack_wait = ack_wait_seconds

    async def worker(self) -> PullWorker:
        """The worker on the usage stream's durable consumer, rewound for a new table (a lost
        data directory): what the stream still keeps is counted again, each record once."""
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
            rewind=self._table.created,
            linger_seconds=self._linger,  # a memory used by many searches is written once
        )

    async def fold(self, msgs: list[Msg]) -> None:
        """A record names each memory once per use (a name listed twice was used twice). Uses
        of a memory that has no live head (deleted since the search) are dropped.

        A fold of a busy linger is thousands of rows: it runs in slices, giving the searches
        the loop between them, and writes its rows a transaction of ``rows_per_transaction`` at
        a time. A fold stopped between two is safe to redo: each row's ``seq`` skips the
        messages it already holds."""
        wanted: list[tuple[Msg, commands_pb2.AccessRecord, Counter[str]]] = []
        for i, msg in enumerate(msgs):
            await _yield_every(i)
            record = commands_pb2.AccessRecord()
            try:
                record.ParseFromString(msg.data)
                names = Counter(record.names)
                for name in names:
                    if self._table.get(name) is None:  # a name with a row was checked before
                        validation.memory_name(name)
            except Exception as err:
                log.error("dropping malformed usage record seq=%s: %s", msg.metadata.sequence.stream, err)
                await msg.term()
                continue
            wanted.append((msg, record, names))
        async with self._index.writing:
            first_used = {n for _, _, names in wanted for n in names if self._table.get(n) is None}
            alive = await live(self._index, first_used)
            folded: dict[str, Use] = {}
            for i, (msg, record, names) in enumerate(wanted):
                await _yield_every(i)
                seq, used_ns = msg.metadata.sequence.stream, record.time.ToNanoseconds()
                for name, uses in names.items():
                    stored = self._table.get(name)
                    if stored is None and name not in alive:
                        continue
                    if stored is not None and seq <= stored.seq:
                        continue  # folded before: a redelivery
                    count, last_ns, top = folded.get(name) or stored or (0, 0, 0)
                    folded[name] = Use(count + uses, max(last_ns, used_ns), max(top, seq))
            rows = list(folded.items())
            for start in range(0, len(rows), self._rows_per_transaction):
                part = dict(rows[start : start + self._rows_per_transaction])
                await asyncio.to_thread(self._table.put, part)
        await asyncio.gather(*(msg.ack() for msg, _, _ in wanted))


_RECORDS_A_SLICE = 16  # a record names a search's results: about 50 names, some 0.1 ms of folding


async def _yield_every(i: int) -> None:
    if i and i % _RECORDS_A_SLICE == 0:
        await asyncio.sleep(0)
