"""The launcher as `make run` uses it: every service SERVING, the CLI works, memories survive a restart."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from memos_sdk.endpoints import SERVICES, LocalPorts
from services.launcher.mesh import Mesh, health_status

pytestmark = pytest.mark.integration


def _memos(base: int, *args: str) -> str:
    env = {**os.environ, "MEMOS_PORT_BASE": str(base)}
    done = subprocess.run(
        [sys.executable, "-m", "memos_sdk.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_mesh_starts_serves_the_cli_and_keeps_memories_across_restarts(tmp_path):
    # Below the kernel's ephemeral range (32768-60999), where ports bound to 0 and outgoing
    # connections of the other tests' services land: a base there collided now and then.
    base = random.randrange(20000, 32000, 20)
    ports = LocalPorts(base)
    with Mesh(tmp_path / "run", ports) as mesh:
        assert all(health_status(ports.addr(s)) == 1 for s in SERVICES)
        _memos(
            base,
            "add",
            "--cube",
            "demo",
            "--speaker",
            "alice",
            "--time",
            "2023-03-01",
            "--wait",
            "I moved to Lisbon in March.",
        )
        _memos(base, "add", "--cube", "demo", "--speaker", "bob", "--wait", "My dog Rex loves the beach.")
        out = _memos(base, "search", "--cube", "demo", "where does alice live?")
        assert "Lisbon" in out.splitlines()[1]
        assert mesh.exited() == {}
    with Mesh(tmp_path / "run", ports):
        out = _memos(base, "search", "--cube", "demo", "--top-k", "1", "Rex the dog")
        assert "Rex loves the beach" in out
        listed = _memos(base, "list", "--cube", "demo")
        assert listed.strip().endswith("2 memories")


def test_the_cli_explains_errors_and_has_help(tmp_path):
    env = {**os.environ, "MEMOS_PORT_BASE": "59980"}  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "memos_sdk.cli", "search", "--cube", "demo", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "make run" in done.stderr
    for command in ("add", "search", "get", "list", "update", "versions", "delete", "watch"):
        help_text = subprocess.run(
            [sys.executable, "-m", "memos_sdk.cli", command, "--help"], capture_output=True, text=True
        )
        assert help_text.returncode == 0 and "usage: memos " + command in help_text.stdout
