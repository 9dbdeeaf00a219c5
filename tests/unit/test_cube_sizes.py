"""The reader's per-cube item limit: exact near the limit, no vault call far from it."""

from __future__ import annotations

import pytest

from services.common.errors import ResourceExhausted
from services.reader.limits import CubeSizes


class Vault:
    def __init__(self, held: int | None) -> None:
        self.held = held
        self.calls = 0

    async def count(self, cube_id: str) -> int | None:
        self.calls += 1
        return self.held


async def test_far_from_the_limit_the_vault_is_asked_once_and_local_writes_are_counted():
    vault = Vault(10)
    sizes = CubeSizes(vault.count, 1000)
    for _ in range(5):
        await sizes.make_room("c", 10)
    assert vault.calls == 1
    await sizes.make_room("other", 1)
    assert vault.calls == 2


async def test_near_the_limit_every_write_reads_the_vaults_count():
    vault = Vault(85)
    sizes = CubeSizes(vault.count, 100)
    await sizes.make_room("c", 10)  # 95 > 90: read
    vault.held = 95
    await sizes.make_room("c", 5)  # read again: exactly full
    assert vault.calls == 2
    vault.held = 100
    with pytest.raises(ResourceExhausted) as refused:
        await sizes.make_room("c", 1)
    assert refused.value.reason == "CUBE_FULL"


async def test_a_stale_figure_is_read_again():
    vault = Vault(0)
    sizes = CubeSizes(vault.count, 1000, fresh_seconds=0.0)
    await sizes.make_room("c", 1)
    await sizes.make_room("c", 1)
    assert vault.calls == 2


async def test_an_unknown_size_lets_the_write_through_and_no_limit_means_no_call():
    sizes = CubeSizes(Vault(None).count, 10)
    await sizes.make_room("c", 50)
    unlimited = Vault(10**9)
    await CubeSizes(unlimited.count, 0).make_room("c", 50)
    assert unlimited.calls == 0


async def test_only_the_most_recent_cubes_are_remembered():
    vault = Vault(0)
    sizes = CubeSizes(vault.count, 1000, max_cubes=2)
    for cube in ("a", "b", "c", "a"):
        await sizes.make_room(cube, 1)
    assert vault.calls == 4  # "a" was forgotten when "c" came
