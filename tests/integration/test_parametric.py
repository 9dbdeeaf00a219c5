"""Parametric memory on a real mesh: Promote -> a distillation job on the work queue -> a LoRA
adapter in the object store, registered in the vault with its lineage -> chat answers from the
adapter alone -> deleting a source withdraws the adapter and rebuilds it without that memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
import nats as nats_client
import pytest

from memos.lifecycle.v1 import lifecycle_pb2
from memos.scheduler.v1 import scheduler_pb2
from memos.type.v1 import memory_pb2
from memos_sdk.client import MemosClient
from memos_sdk.errors import MemosAPIError
from memos_sdk.wire import EventKind, events_subject
from services.common.generation import GenerateRequest, GenerateResult, open_generator
from services.common.settings import GeneratorSettings
from tests.conftest import in_process_mesh

# LoRA training on two CPU cores: slow, slower still on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

FACTS = ["My cat is called Pepperoni.", "I was born in Tromsø.", "My dentist is Dr. Okafor."]
# Few steps, a small replay pool: enough for three facts, quick on two cores.
TRAINER = {"epochs": 12, "replay_pool": 8, "eval_questions": 3, "torch_threads": 2}
LIFECYCLE = {"default_resolve_conflicts": False}
PARAMETRIC = [memory_pb2.MEMORY_KIND_PARAMETRIC]


async def _chat(
    client: MemosClient, cube: str, question: str, **options
) -> tuple[str, scheduler_pb2.ChatReport]:
    text, report = [], None
    async for response in client.chat(cube, [("user", question)], max_new_tokens=24, **options):
        text.append(response.text_delta)
        if response.HasField("report"):
            report = response.report
    return "".join(text), report


async def _adapters(client: MemosClient, cube: str) -> list[memory_pb2.Memory]:
    return [m async for m in client.iter_memories(cube, kinds=PARAMETRIC)]


async def test_promote_trains_registers_serves_and_rebuilds(nats, inference, tmp_path: Path, cube: str):
    async with in_process_mesh(
        nats,
        inference.addr,
        tmp_path,
        lifecycle=LIFECYCLE,
        trainer={**TRAINER, "blob_store_url": str(inference.blobs)},
    ) as mesh:
        client = mesh.client
        turns = [
            {
                "id": f"t{i}",
                "speaker": "user",
                "text": fact,
                "time_text": "2024-03-01 10:00",
                "session_id": "s1",
            }
            for i, fact in enumerate(FACTS)
        ]
        names = list((await client.add_messages(cube, turns, wait_applied=True)).memory_names)
        nc = await nats_client.connect(nats.url)
        trained: list[str] = []
        first_trained = asyncio.Event()

        async def on_event(msg) -> None:
            trained.append(msg.headers["ce-subject"])
            first_trained.set()

        await nc.subscribe(events_subject(cube, EventKind.ADAPTER_TRAINED), cb=on_event)

        reply = await client.promote(cube, request_id="promote-1")
        assert reply.source_count == 3
        again = await client.promote(cube, request_id="promote-1")
        assert again.operation == reply.operation  # a retry is the same job
        progress: list[float] = []
        operation = await client.wait_operation(
            reply.operation, on_update=lambda op: progress.append(op.progress)
        )
        assert operation.state == lifecycle_pb2.OPERATION_STATE_SUCCEEDED, operation.message
        assert 0 < max(progress) <= 1 and operation.attempts == 1

        adapter = await client.get(operation.result_name)
        assert adapter.kind == memory_pb2.MEMORY_KIND_PARAMETRIC
        assert sorted(adapter.lineage.parent_names) == sorted(names)
        assert (inference.blobs / adapter.adapter.blob_key).stat().st_size == adapter.adapter.size_bytes > 0
        assert adapter.adapter.ppl_after > 0 and adapter.adapter.training_examples >= 3 * 7
        # Plaintext search and listing never return the adapter item.
        plain = [m.name async for m in client.iter_memories(cube)]
        assert sorted(plain) == sorted(names)
        assert [m.name for m in await _adapters(client, cube)] == [adapter.name]

        answer, report = await _chat(client, cube, "What is my cat called?", adapter_only=True)
        assert "Pepperoni" in answer
        assert [(u.name, u.placement) for u in report.memories] == [
            (adapter.name, scheduler_pb2.PLACEMENT_ADAPTER)
        ]
        await asyncio.wait_for(first_trained.wait(), 10)
        assert trained == [adapter.name]

        # A source memory goes: the adapter is withdrawn at once and rebuilt without it.
        await client.delete(names[2])
        deadline = time.monotonic() + 600
        while True:
            live = await _adapters(client, cube)
            if live and live[0].name != adapter.name:
                break
            assert time.monotonic() < deadline, "no rebuilt adapter"
            await asyncio.sleep(1)
        rebuilt = live[0]
        assert sorted(rebuilt.lineage.parent_names) == sorted(names[:2])
        withdrawn = await client.get(adapter.name)
        assert withdrawn.state == memory_pb2.MEMORY_STATE_ARCHIVED and withdrawn.adapter.stale
        assert (
            withdrawn.state_change.rule == "source_changed"
            and withdrawn.state_change.related_name == names[2]
        )
        answer, report = await _chat(client, cube, "What is my cat called?", adapter_only=True)
        assert report.memories[0].name == rebuilt.name and "Pepperoni" in answer
        await nc.close()


async def test_promote_and_adapter_use_reject_bad_requests(nats, inference, tmp_path: Path, cube: str):
    async with in_process_mesh(nats, inference.addr, tmp_path, lifecycle=LIFECYCLE) as mesh:
        client = mesh.client
        with pytest.raises(MemosAPIError) as err:
            await client.promote(cube)
        assert (
            err.value.code == grpc.StatusCode.FAILED_PRECONDITION and err.value.reason == "NOTHING_TO_DISTIL"
        )
        with pytest.raises(grpc.aio.AioRpcError) as rpc_err:
            await client.lifecycle.Promote(
                lifecycle_pb2.PromoteRequest(
                    cube_id=cube, target_kind=memory_pb2.MEMORY_KIND_ACTIVATION, request_id="r"
                )
            )
        assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for name, code in (
            ("operations/nope", "INVALID_ARGUMENT"),
            ("cubes/pets/operations/" + "0" * 32, "NOT_FOUND"),
        ):
            with pytest.raises(MemosAPIError) as err:
                await client.get_operation(name)
            assert err.value.code.name == code
        with pytest.raises(MemosAPIError) as err:
            await _chat(client, cube, "hello?", adapter_only=True)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and err.value.reason == "NO_ADAPTER"

    # The inference service serves a cube's adapters to that cube only.
    async with contextlib.AsyncExitStack() as stack:
        generator = open_generator(stack, GeneratorSettings(inference_addr=inference.addr))
        with pytest.raises(Exception) as err:
            async for _ in generator.stream(
                GenerateRequest(prompt="hi", cube_id=cube, adapter_ref="adapters/other-cube/x.safetensors"),
                GenerateResult(),
            ):
                pass
        assert getattr(err.value, "reason", "") == "ADAPTER_REF_OTHER_CUBE"
