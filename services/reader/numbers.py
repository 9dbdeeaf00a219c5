"""Piece numbers that run on through a session from one request to the next.

The scheduler joins a piece with the pieces said right before and after it, found by number
(``services.common.places``). Numbered within each request, a chat that adds its turns one
request at a time would get no neighbours, no replies and no questions. So each session of a
cube keeps its last number in a key-value bucket, and a request takes the next run of numbers
from it (compare-and-set: a request that loses a race reads again).

Turns with no session id belong to their request alone: their numbers start at a base drawn
from the request id, so that numbers of different requests never touch and facts added one by
one are not taken for a conversation.

A retried request (the same request id) gets the numbers it got the first time, from a grant
kept a day, so its pieces come out the same. A request that fails after taking its numbers
leaves a gap: the pieces on either side are then not taken for neighbours, and nothing else is
lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]  # bucket keys allow few characters


class SessionNumbers:
    def __init__(self, counters: KeyValue, grants: KeyValue) -> None:
        self._counters = counters
        self._grants = grants

    async def take(self, cube_id: str, request_id: str, counts: Mapping[str, int]) -> dict[str, int]:
        """For each session, the number that the first of its ``counts[session]`` pieces in this
        request follows."""
        return {session: await self._take(cube_id, request_id, session, n) for session, n in counts.items()}

    async def _take(self, cube_id: str, request_id: str, session: str, n: int) -> int:
        if not session:
            return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:5], "big") << 22
        grant = f"{_digest(cube_id)}.{_digest(request_id)}.{_digest(session)}"
        try:
            return int((await self._grants.get(grant)).value or b"0")
        except KeyNotFoundError:
            pass
        counter = f"{_digest(cube_id)}.{_digest(session)}"
        while True:
            try:
                entry = await self._counters.get(counter)
                last = int(entry.value or b"0")
                await self._counters.update(counter, str(last + n).encode(), last=entry.revision)
            except KeyNotFoundError:
                last = 0
                try:
                    await self._counters.create(counter, str(n).encode())
                except KeyWrongLastSequenceError:
                    continue  # another request made it first
            except KeyWrongLastSequenceError:
                continue
            break
        try:
            await self._grants.create(grant, str(last).encode())
        except KeyWrongLastSequenceError:  # the same request, retried while this one ran
            return int((await self._grants.get(grant)).value or b"0")
        return last
