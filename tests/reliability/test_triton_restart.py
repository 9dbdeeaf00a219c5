"""A Triton that dies under the inference service is started again, and embeddings carry on."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import psutil

from services.common.embedder import Embedder
from services.common.settings import EmbedderSettings
from tests.conftest import running_inference


def _tritonserver(parent_pid: int) -> psutil.Process | None:
    children = psutil.Process(parent_pid).children(recursive=True)
    return next((p for p in children if p.name() == "tritonserver"), None)


async def test_a_killed_triton_is_restarted_and_embeddings_carry_on(tmp_path: Path):
    log_dir = tmp_path / "inference"
    log_dir.mkdir()
    with running_inference(log_dir, MEMOS_INFERENCE_GENERATE_ENABLED="false") as (inference, proc):
        embedder = Embedder(EmbedderSettings(inference_addr=inference.addr, embed_retry_seconds=120))
        try:
            before = await embedder.embed(["the locker code is 4711"])
            first = _tritonserver(proc.pid)
            assert first is not None
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)

            after = await embedder.embed(["the locker code is 4711"])  # retried until Triton is back
            np.testing.assert_allclose(after, before, atol=1e-5)

            second = _tritonserver(proc.pid)
            assert second is not None and second.pid != first.pid
            assert proc.poll() is None
            log = (log_dir / "inference.log").read_text()
            assert "Triton died" in log and "starting it again" in log
        finally:
            await embedder.close()


def test_an_inference_service_whose_triton_keeps_dying_exits(tmp_path: Path):
    log_dir = tmp_path / "inference"
    log_dir.mkdir()
    with running_inference(
        log_dir, MEMOS_INFERENCE_GENERATE_ENABLED="false", MEMOS_INFERENCE_TRITON_MAX_RESTARTS="0"
    ) as (_, proc):
        _tritonserver(proc.pid).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.returncode == 1
        assert "giving up" in (log_dir / "inference.log").read_text()
