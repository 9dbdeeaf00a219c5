"""The records of the points a plain search selects, mirrored in the vault's memory.

A search reads the records of its hundred or so best points, and the engine decodes each point's
whole payload to hand out the three fields of a record (records.RECORD_FIELDS): about 10 µs a
point whatever is asked for, 1.2 ms of a LongMemEval search offline and a fifth of the vault's
time on a search live. The index keeps those fields of every live plaintext head
(records.LIVE_IN) here, still sealed, and reads only the others from the engine.

The mirror never holds what the engine does not: every change of the index goes through
``EdgeIndex.write`` on the engine's thread, which updates the mirror after each engine update,
and a failed update clears it. It may lack points (after a start, until the start-up count has
read every head), which are then read from the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .records import LIVE_IN, RECORD_FIELDS


class LiveRecords:
    """Record fields by point id (its UUID's integer). Used on the engine's thread only."""

    def __init__(self) -> None:
        self._by_id: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, point_id: int) -> dict[str, Any] | None:
        """The point's record fields; None when the mirror lacks the point (ask the engine)."""
        return self._by_id.get(point_id)

    def written(self, point_id: int, payload: Mapping[str, Any]) -> None:
        """The point now has ``payload`` (its whole payload)."""
        if LIVE_IN in payload:
            self._by_id[point_id] = {field: payload[field] for field in RECORD_FIELDS if field in payload}
        else:
            self._by_id.pop(point_id, None)

    def deleted(self, point_ids: Iterable[int]) -> None:
        for point_id in point_ids:
            self._by_id.pop(point_id, None)

    def clear(self) -> None:
        self._by_id.clear()
