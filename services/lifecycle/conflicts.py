"""Duplicates and contradictions among a cube's memories, resolved as each new memory arrives.

For a new memory the lifecycle reads the nearest live memories of the same speaker (cosine of
their text embeddings), which the vault names in the memory's created event, and judges them in
turn:

- *contradiction*: the two talk about one thing (cosine >= conflict_similarity and shared topic
  words) and the later one says that something changed ("no longer", "moved to", "I'm vegan
  now", ...) or flips a negation.
  The later one (by event time) supersedes the earlier: the earlier becomes SUPERSEDED with a
  link and a valid_to time, and stays readable.
- *duplicate*: the same words, or cosine >= duplicate_similarity with the same topic words. The
  new one is MERGED into the older one, which takes on its sources (provenance of both kept).

Rules over words are cheap and explainable, and they miss contradictions that share no words
("I love steak" then "I'm vegan now"): that needs world knowledge no packaged model here has.

Nothing is deleted, and every decision records its rule and score in the state change.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from memos.events.v1 import events_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from memos_sdk.wire import EventKind, Stream, events_subject
from services.common import states
from services.common.bus import PullWorker, durable_worker
from services.common.clients import forward_errors
from services.common.errors import MemosError, NotFound
from services.common.memory_text import said

from .moves import Mover
from .policies import Policies
from .settings import LifecycleSettings

log = logging.getLogger(__name__)

CONSUMER = "lifecycle-conflicts"
MAX_READ = 1000  # names in one BatchGetMemories
S = memory_pb2.MemoryState

_WORD = re.compile(r"[a-z0-9']+")
# Words that say the world changed since an earlier statement. Bare "now" is not one ("now I'm
# painting") unless it closes a sentence or a statement of being ("I drive a Ford now").
_CHANGE = re.compile(
    r"(?<!won't )(?<!don't )(?<!never )(?<!not )"  # "I won't quit" changes nothing
    r"\b(no longer|not any ?more|anymore|any more|nowadays|these days|from now on|used to|"
    r"switched|moved (?:to|out|away)|quit|stopped|gave up|sold|changed (?:my|our|jobs?)|instead of)\b"
    r"|\b(?:i am|i'm|we are|we're|is|are)\b[^.!?,;]{1,40}\bnow\b|\bnow\s*(?:[.!]|$)"
)
_NEGATION = re.compile(r"\b(?:not|never|no|don't|doesn't|didn't|isn't|aren't|wasn't|can't|won't)\b")
# Phrases that look negative and are not: stripped before looking for a negation.
_IDIOMS = re.compile(r"\b(?:can't wait|no worries|no problem|long time no \w+|not sure)\b")
# People a statement may be about instead of the speaker ("my sister is vegan").
_PEOPLE = re.compile(
    r"\bmy (sister|brother|mom|mother|dad|father|parents|friend|friends|cousin|uncle|aunt|"
    r"neighbou?r|roommate|husband|wife|partner|boss|son|daughter|kids|grandma|grandpa|colleague|"
    r"coworker|family)\b"
)
_STOP = frozenset(
    "a an the and or but so of to in on at for with from by about as is am are was were be been "
    "being i i'm me my we our you your he she it its they them their this that these those there "
    "have has had do does did will would can could should just really very too also not no never "
    "don't doesn't didn't isn't aren't wasn't can't won't now then what which who how when where "
    "yes yeah oh wow so lot lots much more some any all hey hi hello thanks".split()
)


@dataclass(frozen=True, slots=True)
class Verdict:
    rule: str  # "duplicate" or "contradiction"
    score: float
    reason: str


def content(memory: memory_pb2.Memory) -> str:
    """The words said, lower-case, without the date and the speaker the reader puts in front."""
    return " ".join(_WORD.findall(said(memory).lower()))


def topic_words(text: str) -> set[str]:
    return {w for w in text.split() if w not in _STOP and len(w) > 2}


def when(memory: memory_pb2.Memory) -> int:
    stamp = memory.event_time if memory.HasField("event_time") else memory.create_time
    return stamp.ToNanoseconds()


def similarity_floor(duplicate_similarity: float, conflict_similarity: float) -> float:
    """The cosine below which no rule of ``judge`` can fire."""
    return min(duplicate_similarity, conflict_similarity)


def judge(
    earlier: memory_pb2.Memory,
    later: memory_pb2.Memory,
    similarity: float,
    *,
    duplicate_similarity: float,
    conflict_similarity: float,
) -> Verdict | None:
    """What the later memory does to the earlier one, if anything.

    ``similarity`` is the cosine of the two memories' text vectors. Both must be about the same
    people. A contradiction also needs a change cue only the later one has, with half of the
    shorter one's topic words shared, or a negation only one has, with half of all topic words
    shared. A duplicate needs the same words, or all the shorter one's topic words in the other.
    """
    old, new = content(earlier), content(later)
    if not old or not new or similarity < similarity_floor(duplicate_similarity, conflict_similarity):
        return None
    if old == new:
        return Verdict("duplicate", similarity, "the same words")
    old_topic, new_topic = topic_words(old), topic_words(new)
    if not old_topic or not new_topic:
        return None
    common = len(old_topic & new_topic)
    covered = common / min(len(old_topic), len(new_topic))  # the shorter one's topic is in the other
    alike = common / max(len(old_topic), len(new_topic))  # the two say nearly the same
    same_people = set(_PEOPLE.findall(old)) == set(_PEOPLE.findall(new))
    if similarity >= conflict_similarity and same_people:
        cue = _CHANGE.search(new)
        if covered >= 0.5 and cue and not _CHANGE.search(old):
            return Verdict("contradiction", similarity, f"the later memory says it changed ({cue[0]!r})")
        negated_old, negated_new = (bool(_NEGATION.search(_IDIOMS.sub("", t))) for t in (old, new))
        if alike >= 0.5 and negated_old != negated_new:
            return Verdict("contradiction", similarity, "the later memory negates the earlier one")
    if similarity >= duplicate_similarity and covered == 1.0 and same_people:
        return Verdict("duplicate", similarity, "restates the earlier memory")
    return None


def _sources(memory: memory_pb2.Memory) -> set[tuple[str, str]]:
    return {(s.session_id, s.turn_id) for s in memory.provenance.sources}


class ConflictResolver:
    def __init__(
        self,
        settings: LifecycleSettings,
        js: JetStreamContext,
        policies: Policies,
        vault: vault_pb2_grpc.VaultServiceStub,
        mover: Mover,
    ) -> None:
        self._settings = settings
        self._js = js
        self._policies = policies
        self._vault = vault
        self._mover = mover
        self._floor = similarity_floor(settings.duplicate_similarity, settings.conflict_similarity)

    async def worker(self) -> PullWorker:
        return await durable_worker(
            self._js,
            Stream.EVENTS,
            durable=CONSUMER,
            filter_subject=events_subject("*", EventKind.MEMORY_CREATED),
            handle=self._handle,
            batch_size=32,
            name="conflicts",
            ack_wait_seconds=60.0,
            deliver_policy=DeliverPolicy.NEW,
            max_deliver=5,
        )

    async def _handle(self, msgs: list[Msg]) -> None:
        batch: list[tuple[Msg, events_pb2.MemoryCreated]] = []
        for msg in msgs:
            try:
                batch.append((msg, events_pb2.MemoryCreated.FromString(msg.data)))
            except Exception:
                log.exception("dropping malformed created event seq=%s", msg.metadata.sequence.stream)
                await msg.term()
        read = _Reads(self._read)
        try:
            # The memories the batch's checks judge, read in one call per cube.
            await read.ahead([(c.memory.cube_id, await self._to_judge(c)) for _, c in batch])
        except MemosError as err:
            log.warning("conflict checks of %d events failed, retrying later: %s", len(batch), err)
            await asyncio.gather(*(msg.nak(delay=5) for msg, _ in batch))
            return
        for msg, created in batch:
            try:
                await self.resolve(created, read)
            except NotFound:
                pass  # deleted since
            except MemosError as err:
                log.warning("conflict check of an event failed, retrying later: %s", err)
                await msg.nak(delay=5)
                continue
            except Exception:
                log.exception("dropping malformed created event seq=%s", msg.metadata.sequence.stream)
                await msg.term()
                continue
            await msg.ack()

    async def _worth_checking(self, created: events_pb2.MemoryCreated) -> bool:
        """False when the judge would turn every pair down before reading them (most new
        memories: far from all others)."""
        memory = created.memory
        if memory.kind != memory_pb2.MEMORY_KIND_PLAINTEXT or memory.type == memory_pb2.MEMORY_TYPE_SUMMARY:
            return False  # a summary restates memories that are checked themselves
        if not (await self._policies.get(memory.cube_id)).resolve_conflicts:
            return False
        return not created.HasField("nearest_similarity") or created.nearest_similarity >= self._floor - 1e-6

    async def _to_judge(self, created: events_pb2.MemoryCreated) -> list[str]:
        """The names a check of ``created`` reads, when its event names its neighbours: the
        memory and its close neighbours, or none."""
        if not created.neighbours or not await self._worth_checking(created):
            return []
        close = [n.name for n in created.neighbours if n.similarity >= self._floor - 1e-6]
        return [created.memory.name, *close[: self._settings.conflict_candidates]] if close else []

    async def resolve(self, created: events_pb2.MemoryCreated, read: _Reads) -> Verdict | None:
        """Judge a new memory (``created``: the event of its creation, whose memory is a header)
        against its nearest live neighbours of the same speaker and apply the verdict. ``read``
        holds the memories of the event's batch.

        The event names those neighbours (the vault measured them when it applied the memory);
        for an event that does not (a redelivered write), the vault is asked for them."""
        if created.neighbours:
            names = await self._to_judge(created)
            found = await read.get(created.memory.cube_id, names) if names else {}
            memory = found.get(created.memory.name)
            scores = {n.name: n.similarity for n in created.neighbours}
            close = [(found[name], scores[name]) for name in names[1:] if name in found]
        elif await self._worth_checking(created):
            memory, close = await self._query(created.memory)
        else:
            return None
        if memory is None or memory.state not in states.LIVE:
            return None
        for other, similarity in close:
            # Another piece or statement of the same turn is no conflict, nor is a summary.
            if (
                other.state not in states.LIVE
                or other.type == memory_pb2.MEMORY_TYPE_SUMMARY
                or _sources(other) & _sources(memory)
            ):
                continue
            verdict = judge(
                *_in_time_order(other, memory),
                similarity,
                duplicate_similarity=self._settings.duplicate_similarity,
                conflict_similarity=self._settings.conflict_similarity,
            )
            if verdict is None:
                continue
            read.forget(memory.name, other.name)  # versions follow
            earlier, later = _in_time_order(other, memory)
            if verdict.rule == "contradiction":
                await self.supersede(earlier, later, verdict)
            else:
                await self.merge(memory, other, verdict)
            return verdict
        return None

    async def _query(
        self, created: memory_pb2.Memory
    ) -> tuple[memory_pb2.Memory | None, list[tuple[memory_pb2.Memory, float]]]:
        """The memory and its close live neighbours, asked of the vault."""
        async with forward_errors("vault"):
            found = await self._vault.Query(
                vault_pb2.QueryRequest(
                    cube_id=created.cube_id,
                    similar_to=created.name,
                    limit=self._settings.conflict_candidates,
                    filter=vault_pb2.MemoryFilter(speaker=created.speaker),
                ),
                timeout=self._settings.vault_timeout_seconds,
            )
        close = [
            hit for hit in found.results if hit.score >= self._floor and hit.memory.speaker == created.speaker
        ]
        if not close:
            return None, []
        # A query's hit lacks its index key (index_context), which the next version must keep.
        read = await self._read(created.cube_id, [created.name, *(hit.memory.name for hit in close)])
        return read.get(created.name), [
            (read[h.memory.name], h.score) for h in close if h.memory.name in read
        ]

    async def _read(self, cube_id: str, names: list[str]) -> dict[str, memory_pb2.Memory]:
        """The memories of ``names`` that exist, by name (whole: with their index keys)."""
        async with forward_errors("vault"):
            found = await self._vault.BatchGetMemories(
                vault_pb2.BatchGetMemoriesRequest(cube_id=cube_id, names=names, allow_missing=True),
                timeout=self._settings.vault_timeout_seconds,
            )
        return {m.name: m for m in found.memories}

    async def supersede(self, earlier: memory_pb2.Memory, later: memory_pb2.Memory, verdict: Verdict) -> None:
        if later.lineage.supersedes != earlier.name:

            def link(m: memory_pb2.Memory) -> None:
                m.lineage.supersedes = earlier.name
                if not m.HasField("valid_from"):
                    m.valid_from.CopyFrom(m.event_time if m.HasField("event_time") else m.create_time)

            later = await self._mover.write(later, link)

        def retire(m: memory_pb2.Memory) -> None:
            m.lineage.superseded_by = later.name
            m.valid_to.CopyFrom(later.valid_from)

        change = _change(S.MEMORY_STATE_SUPERSEDED, verdict, later.name)
        await self._mover.move(earlier, change, edit=retire)
        log.info("%s supersedes %s (%s, %.3f)", later.name, earlier.name, verdict.reason, verdict.score)

    async def merge(
        self, duplicate: memory_pb2.Memory, survivor: memory_pb2.Memory, verdict: Verdict
    ) -> None:
        if duplicate.name not in survivor.lineage.parent_names:

            def absorb(m: memory_pb2.Memory) -> None:
                m.lineage.parent_names.append(duplicate.name)
                known = _sources(m)
                m.provenance.sources.extend(
                    s for s in duplicate.provenance.sources if (s.session_id, s.turn_id) not in known
                )

            survivor = await self._mover.write(survivor, absorb)

        def point(m: memory_pb2.Memory) -> None:
            m.lineage.merged_into = survivor.name

        await self._mover.move(duplicate, _change(S.MEMORY_STATE_MERGED, verdict, survivor.name), edit=point)
        log.info("%s merged into %s (%.3f)", duplicate.name, survivor.name, verdict.score)


class _Reads:
    """Memories read for the conflict checks of one batch of events, by name: read ahead in one
    call per cube, and again after a verdict wrote new versions of them."""

    def __init__(self, read) -> None:
        self._read = read
        self._known: dict[str, memory_pb2.Memory] = {}
        self._missing: set[str] = set()

    async def ahead(self, wanted: list[tuple[str, list[str]]]) -> None:
        by_cube: dict[str, set[str]] = {}
        for cube_id, names in wanted:
            by_cube.setdefault(cube_id, set()).update(names)
        for cube_id, names in by_cube.items():
            await self.get(cube_id, sorted(names))

    async def get(self, cube_id: str, names: list[str]) -> dict[str, memory_pb2.Memory]:
        unknown = [n for n in names if n not in self._known and n not in self._missing]
        for start in range(0, len(unknown), MAX_READ):
            part = unknown[start : start + MAX_READ]
            found = await self._read(cube_id, part)
            self._known.update(found)
            self._missing.update(n for n in part if n not in found)
        return {n: self._known[n] for n in names if n in self._known}

    def forget(self, *names: str) -> None:
        for name in names:
            self._known.pop(name, None)
            self._missing.discard(name)


def _in_time_order(a: memory_pb2.Memory, b: memory_pb2.Memory) -> list[memory_pb2.Memory]:
    return sorted((a, b), key=lambda m: (when(m), m.create_time.ToNanoseconds()))


def _change(target: int, verdict: Verdict, related: str) -> memory_pb2.StateChange:
    return memory_pb2.StateChange(
        to_state=target, rule=verdict.rule, score=verdict.score, reason=verdict.reason, related_name=related
    )
