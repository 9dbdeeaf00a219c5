"""A distillation job survives a kill -9 of its trainer: the work queue hands it to the next one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from services.launcher.mesh import health_status
from tests.conftest import ROOT, free_port, in_process_mesh, wait_for

# LoRA training on two CPU cores: slow, slower still on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(1800)]

FACTS = ["My cat is called Pepperoni.", "I was born in Tromsø."]


def _trainer(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    addr = f"127.0.0.1:{free_port()}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.trainer"],
            env={**env, "MEMOS_TRAINER_GRPC_ADDR": addr},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    wait_for(lambda: health_status(addr) == 1, 120, "trainer", proc)
    return proc, addr


async def test_a_job_whose_trainer_is_killed_is_finished_by_the_next(
    nats, inference, tmp_path: Path, cube: str
):
    async with in_process_mesh(
        nats, inference.addr, tmp_path, lifecycle={"default_resolve_conflicts": False}
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
        await client.add_messages(cube, turns, wait_applied=True)
        env = {
            **os.environ,
            "MEMOS_TRAINER_NATS_URL": nats.url,
            "MEMOS_TRAINER_VAULT_ADDR": mesh.client.endpoints.vault,
            "MEMOS_TRAINER_LIFECYCLE_ADDR": mesh.client.endpoints.lifecycle,
            "MEMOS_TRAINER_INFERENCE_ADDR": inference.addr,
            "MEMOS_TRAINER_BLOB_STORE_URL": str(inference.blobs),
            "MEMOS_TRAINER_JOB_ACK_WAIT_SECONDS": "6",
            "MEMOS_TRAINER_EPOCHS": "8",
            "MEMOS_TRAINER_REPLAY_POOL": "8",
            "MEMOS_TRAINER_EVAL_QUESTIONS": "1",
            "MEMOS_TRAINER_SERVICE_API_KEY": mesh.keys.service_key,
            "MEMOS_TRAINER_GOVERNANCE_ADDR": mesh.endpoints.governance,
        }
        first, _ = _trainer(env, tmp_path / "trainer-1.log")
        reply = await client.promote(cube)
        deadline = time.monotonic() + 300
        while True:  # until it is training
            operation = await client.get_operation(reply.operation)
            if operation.state == lifecycle_pb2.OPERATION_STATE_RUNNING and operation.progress > 0:
                break
            assert time.monotonic() < deadline, operation.message
            await asyncio.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

        second, _ = _trainer(env, tmp_path / "trainer-2.log")
        try:
            done = await asyncio.wait_for(client.wait_operation(reply.operation), 600)
        finally:
            second.terminate()
            second.wait(timeout=60)
        assert done.state == lifecycle_pb2.OPERATION_STATE_SUCCEEDED, done.message
        assert done.attempts == 2
        adapters = [m async for m in client.iter_memories(cube, kinds=[memory_pb2.MEMORY_KIND_PARAMETRIC])]
        assert [m.name for m in adapters] == [done.result_name]
        # Epoch checkpoints are written while it trains and removed once the adapter is registered.
        assert not list(inference.blobs.glob("checkpoints/**/*.pt"))
