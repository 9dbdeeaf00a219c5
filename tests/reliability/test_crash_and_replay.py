"""Acknowledged writes survive a kill -9 of the vault; a vault with an empty index rebuilds it
from the log, and a rebuild cut short starts over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats as nats_client
import pytest
from qdrant_edge import EdgeShard, UpdateOperation

from memos.vault.v1 import commands_pb2
from memos_sdk import Endpoints, MemosClient
from memos_sdk.wire import Stream, events_subject, usage_subject
from services.common import validation
from services.common.bus import publish, wait_applied
from services.common.clock import now_timestamp
from services.common.grpc_host import ServiceHost
from services.launcher.mesh import health_status
from services.reader.server import setup as reader_setup
from services.vault.index import INDEX_DIR, EdgeIndex
from services.vault.rebuild import pending
from services.vault.records import head_id
from services.vault.server import setup as vault_setup
from services.vault.usage import USAGE_FILE
from tests.conftest import ROOT, free_port, mesh_keys, mint_token, service_settings, until, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

BATCHES = 30
PER_BATCH = 100


def _batch(b: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"b{b}:t{i}",
            "speaker": f"s{i % 3}",
            "text": f"fact {i} of batch {b}: item {b * PER_BATCH + i}",
        }
        for i in range(PER_BATCH)
    ]


class VaultProcess:
    def __init__(self, nats_url: str, triton_addr: str, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "MEMOS_VAULT_GRPC_ADDR": self.addr,
            "MEMOS_VAULT_NATS_URL": nats_url,
            "MEMOS_VAULT_INFERENCE_ADDR": triton_addr,
            "MEMOS_VAULT_DATA_DIR": str(data_dir),
            "MEMOS_VAULT_APPLY_BATCH_SIZE": "64",
            "MEMOS_VAULT_AUTH_PUBLIC_KEY_FILE": str(mesh_keys(data_dir.parent).public_key),
        }
        self._log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self._log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.vault"], env=self._env, stdout=out, stderr=out, cwd=ROOT
            )
        wait_for(lambda: health_status(self.addr) == 1, 60, "vault", self.proc)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@contextlib.asynccontextmanager
async def _writer(nats_url: str, settings: dict) -> AsyncIterator[MemosClient]:
    """A client of an in-process vault and reader."""
    async with ServiceHost("vault", settings["vault"], vault_setup) as vault:
        async with ServiceHost(
            "reader", settings["reader"](f"127.0.0.1:{vault.port}"), reader_setup
        ) as reader:
            endpoints = Endpoints(f"127.0.0.1:{reader.port}", f"127.0.0.1:{vault.port}", "unused:1", nats_url)
            async with MemosClient(endpoints, token=mint_token(settings["keys"])) as client:
                yield client


@contextlib.asynccontextmanager
async def _vault_only(nats_url: str, settings: dict) -> AsyncIterator[MemosClient]:
    """A client of an in-process vault alone."""
    async with ServiceHost("vault", settings["vault"], vault_setup) as vault:
        endpoints = Endpoints("unused:1", f"127.0.0.1:{vault.port}", "unused:1", nats_url)
        async with MemosClient(endpoints, token=mint_token(settings["keys"])) as client:
            yield client


async def _wait_until_log_applied(nats_url: str, *, timeout_seconds: float) -> None:
    """Until the vault has applied everything in the write log."""
    nc = await nats_client.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(Stream.WRITES)
        await wait_applied(nc.jetstream(), info.state.last_seq, timeout_seconds=timeout_seconds)
    finally:
        await nc.close()


async def _count_all(client: MemosClient, cube: str) -> tuple[int, set[str]]:
    names = [m.name async for m in client.iter_memories(cube, page_size=1000)]
    return len(names), set(names)


async def test_acknowledged_writes_survive_kill_9_of_the_vault(nats, triton_addr, tmp_path, cube):
    vault = VaultProcess(nats.url, triton_addr, tmp_path / "vault", tmp_path / "vault.log")
    vault.start()
    settings = service_settings(nats.url, triton_addr, tmp_path)
    acked: list[str] = []
    try:
        async with ServiceHost("reader", settings["reader"](vault.addr), reader_setup) as reader:
            endpoints = Endpoints(
                reader=f"127.0.0.1:{reader.port}", vault=vault.addr, scheduler="unused:1", nats_url=nats.url
            )
            async with MemosClient(endpoints, token=mint_token(settings["keys"])) as client:
                killed = asyncio.Event()

                async def writer(batches: range) -> None:
                    for b in batches:
                        reply = await client.add_messages(cube, _batch(b))
                        acked.extend(reply.memory_names)
                        if len(acked) >= BATCHES * PER_BATCH // 3 and not killed.is_set():
                            killed.set()
                            vault.kill9()  # in the middle of applying: the log keeps growing meanwhile

                await asyncio.gather(*(writer(range(w, BATCHES, 3)) for w in range(3)))
                assert killed.is_set()
                vault.start()
                await _wait_until_log_applied(nats.url, timeout_seconds=180)
                count, names = await _count_all(client, cube)
    finally:
        vault.stop()
    assert len(acked) == BATCHES * PER_BATCH
    assert count == len(names) == len(acked)  # present exactly once
    assert names == set(acked)  # no loss


async def test_a_vault_with_an_empty_index_rebuilds_it_from_the_log(nats, triton_addr, tmp_path, cube):
    settings = service_settings(nats.url, triton_addr, tmp_path)
    vault_settings = settings["vault"]
    async with _writer(nats.url, settings) as client:
        added = []
        for b in range(3):
            added += (await client.add_messages(cube, _batch(b), wait_applied=True)).memory_names
        updated = await client.update(added[0], text="a corrected fact")
        await client.delete(added[1])
    shutil.rmtree(vault_settings.data_dir / INDEX_DIR)

    # A plain subscriber sees every publish, even one the stream drops as a duplicate.
    watcher = await nats_client.connect(nats.url)
    events = await watcher.subscribe(events_subject(cube))
    async with _vault_only(nats.url, settings) as client:
        await _wait_until_log_applied(nats.url, timeout_seconds=120)
        await watcher.flush()
        # The rebuild changed no memory, so it told no subscriber of any change.
        assert events.pending_msgs == 0
        await watcher.close()
        count, names = await _count_all(client, cube)
        assert count == len(added) - 1
        assert names == set(added) - {added[1]}
        rebuilt = await client.get(added[0])
        assert (rebuilt.version, rebuilt.text) == (2, updated.text)
        assert [v.version for v in await client.versions(added[0])] == [2, 1]
        await until(_done(vault_settings.data_dir), "the rebuild marked done")


async def _index_of_an_old_layout_with_usage(nats_url: str, settings: dict, cube: str) -> tuple[str, str]:
    """Two memories, the first used twice, in an index of a layout that kept usage counts in
    its heads' payloads (before index-v13), and no usage table; the usage stream aged out (it
    keeps a day): a rebuild for the new layout must take the counts from the index it replaces."""
    data_dir = settings["vault"].data_dir
    nc = await nats_client.connect(nats_url)
    js = nc.jetstream()
    async with _writer(nats_url, settings) as client:
        used, unused = (await client.add_messages(cube, _batch(0)[:2], wait_applied=True)).memory_names
        record = commands_pb2.AccessRecord(cube_id=cube, names=[used, used], time=now_timestamp())
        await publish(js, usage_subject(cube), record.SerializeToString(), msg_id=f"{cube}-uses")
        await until(lambda: _used_twice(client, used), "the usage folded")
    old = EdgeShard.load(str(data_dir / INDEX_DIR))
    legacy = {"access_count": 2, "last_access_ns": now_timestamp().ToNanoseconds(), "usage_seq": 1}
    old.update(UpdateOperation.set_payload([head_id(*validation.memory_name(used))], legacy))
    old.flush()
    old.close()
    (data_dir / INDEX_DIR).rename(data_dir / "index-v1")
    for path in data_dir.glob(f"{USAGE_FILE}*"):
        path.unlink()
    await js.purge_stream(Stream.USAGE)
    await nc.close()
    return used, unused


async def _rebuilt_with_usage(nats_url: str, settings: dict, used: str, unused: str) -> None:
    data_dir = settings["vault"].data_dir
    async with _vault_only(nats_url, settings) as client:
        await _wait_until_log_applied(nats_url, timeout_seconds=120)
        rebuilt = await client.get(used)
        assert rebuilt.usage.access_count == 2
        assert rebuilt.usage.HasField("last_access_time")
        assert (await client.get(unused)).usage.access_count == 0
        # Done, the rebuild leaves no index of an older layout for a downgraded vault to take
        # for current.
        await until(_done(data_dir), "the rebuild marked done")
        assert not (data_dir / "index-v1").exists()
        assert (await client.get(used)).usage.access_count == 2


async def test_an_index_of_a_new_layout_keeps_the_usage_of_the_old_one(nats, triton_addr, tmp_path, cube):
    settings = service_settings(nats.url, triton_addr, tmp_path)
    used, unused = await _index_of_an_old_layout_with_usage(nats.url, settings, cube)
    await _rebuilt_with_usage(nats.url, settings, used, unused)


async def test_a_rebuild_cut_short_starts_over(nats, triton_addr, tmp_path, cube):
    settings = service_settings(nats.url, triton_addr, tmp_path)
    used, unused = await _index_of_an_old_layout_with_usage(nats.url, settings, cube)
    # A vault that died right after creating the new index, before replaying the log into it
    # (the state a crash at any point of a rebuild leaves is this one, or part of the log in).
    index = EdgeIndex(settings["vault"].data_dir / INDEX_DIR, dim=384, bm25_avg_len=32.0)
    nc = await nats_client.connect(nats.url)
    assert await pending(index, nc.jetstream()) is not None
    await nc.close()
    await index.open()
    await index.close()

    watcher = await nats_client.connect(nats.url)
    events = await watcher.subscribe(events_subject(cube))
    await _rebuilt_with_usage(nats.url, settings, used, unused)
    await watcher.flush()
    assert events.pending_msgs == 0
    await watcher.close()


def _done(data_dir: Path):
    def marked() -> bool:
        return any(p.name.endswith(".rebuild") for p in data_dir.iterdir())

    async def probe() -> bool:
        return not await asyncio.to_thread(marked)

    return probe


async def _used_twice(client: MemosClient, name: str) -> bool:
    return (await client.get(name)).usage.access_count == 2
