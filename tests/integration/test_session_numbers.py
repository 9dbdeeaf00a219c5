"""Piece numbers run on through a session from one request to the next (reader/numbers.py)."""

from __future__ import annotations

import asyncio

import nats as nats_client
import pytest

from memos_sdk.wire import Bucket
from services.common.buckets import open_bucket
from services.reader.numbers import SessionNumbers

pytestmark = pytest.mark.integration


async def test_requests_take_runs_that_follow_each_other_and_a_retry_gets_its_own_again(nats):
    nc = await nats_client.connect(nats.url)
    try:
        js = nc.jetstream()
        numbers = SessionNumbers(
            await open_bucket(js, Bucket.SESSION_NUMBERS), await open_bucket(js, Bucket.NUMBER_GRANTS)
        )
        assert await numbers.take("c1", "r1", {"s1": 3, "s2": 1}) == {"s1": 0, "s2": 0}
        assert await numbers.take("c1", "r2", {"s1": 2}) == {"s1": 3}
        assert await numbers.take("c1", "r1", {"s1": 3, "s2": 1}) == {"s1": 0, "s2": 0}  # retried
        assert await numbers.take("c2", "r3", {"s1": 1}) == {"s1": 0}  # another cube's session
        # Turns with no session belong to their request: its numbers never touch another's.
        alone = [(await numbers.take("c1", f"r{i}", {"": 5}))[""] for i in range(4, 8)]
        assert alone == [(await numbers.take("c1", f"r{i}", {"": 5}))[""] for i in range(4, 8)]
        assert min(abs(a - b) for a in alone for b in alone if a != b) > 5 and len(set(alone)) == 4

        # Requests racing for one session get runs that neither overlap nor leave gaps.
        taken = await asyncio.gather(*(numbers.take("c1", f"race-{i}", {"s3": i + 1}) for i in range(8)))
        runs = sorted((first["s3"], i + 1) for i, first in enumerate(taken))
        ends = [0]
        for first, length in runs:
            assert first == ends[-1]
            ends.append(first + length)
        assert ends[-1] == sum(range(1, 9))
    finally:
        await nc.close()
