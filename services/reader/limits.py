"""The per-cube item limit, checked without asking the vault on every write."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.common.errors import ResourceExhausted

NEAR_LIMIT = 0.9  # closer than this to the limit, the vault's figure is always read again


@dataclass
class _Size:
    held: int
    read_at: float


class CubeSizes:
    """Each cube's size as the vault last reported it plus what this reader wrote since. The vault
    is asked again when that figure is older than ``fresh_seconds`` or a write would take the cube
    near its limit, so a full cube is refused on the vault's own count while most writes cost no
    call. The limit is soft: other readers' writes and deletes show up at the next read."""

    def __init__(
        self,
        count: Callable[[str], Awaitable[int | None]],
        limit: int,
        *,
        fresh_seconds: float = 10.0,
        max_cubes: int = 10_000,
    ) -> None:
        self._count = count  # None: the size cannot be read now
        self._limit = limit
        self._fresh_seconds = fresh_seconds
        self._max_cubes = max_cubes
        self._sizes: OrderedDict[str, _Size] = OrderedDict()

    async def make_room(self, cube_id: str, adding: int) -> None:
        """Count ``adding`` items against the cube, or RESOURCE_EXHAUSTED (CUBE_FULL)."""
        if not self._limit:
            return
        size = self._sizes.get(cube_id)
        now = time.monotonic()
        if (
            size is None
            or now - size.read_at > self._fresh_seconds
            or size.held + adding > self._limit * NEAR_LIMIT
        ):
            held = await self._count(cube_id)
            if held is None:
                return
            size = _Size(held, now)
            self._sizes[cube_id] = size
        self._sizes.move_to_end(cube_id)
        while len(self._sizes) > self._max_cubes:
            self._sizes.popitem(last=False)
        if size.held + adding > self._limit:
            raise ResourceExhausted(
                f"cube {cube_id} holds {size.held} memories; {adding} more would pass its limit of "
                f"{self._limit}",
                reason="CUBE_FULL",
                cube_id=cube_id,
                limit=self._limit,
            )
        size.held += adding
