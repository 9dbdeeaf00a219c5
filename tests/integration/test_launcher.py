"""The launcher as `make run` uses it: every service SERVING, the CLI works, memories survive a restart."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from memos_sdk.auth import save_api_key
from memos_sdk.endpoints import SERVICES, LocalPorts
from services.launcher.mesh import Mesh, health_status

pytestmark = pytest.mark.integration


def _memos(base: int, *args: str, api_key: str = "", ok: bool = True) -> str:
    env = {**os.environ, "MEMOS_PORT_BASE": str(base)}
    env.pop("MEMOS_API_KEY", None)
    if api_key:
        env["MEMOS_API_KEY"] = api_key
    done = subprocess.run(
        [sys.executable, "-m", "memos_sdk.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode == 0) == ok, done.stderr
    return done.stdout + done.stderr


def test_the_mesh_starts_serves_the_cli_and_keeps_memories_across_restarts(tmp_path, monkeypatch):
    # Below the kernel's ephemeral range (32768-60999), where ports bound to 0 and outgoing
    # connections of the other tests' services land: a base there collided now and then.
    base = random.randrange(20000, 32000, 20)
    ports = LocalPorts(base)
    monkeypatch.setenv("MEMOS_CREDENTIALS_FILE", str(tmp_path / "credentials.json"))
    with Mesh(tmp_path / "run", ports) as mesh:
        assert all(health_status(ports.addr(s)) == 1 for s in SERVICES)
        save_api_key(ports.addr("governance"), mesh.admin_key)  # as `make run` does
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

        # A second principal: kept out until the cube is shared, and again once it is revoked.
        created = _memos(base, "principal", "create", "bob")
        bob = created.split("MEMOS_API_KEY):")[1].split()[0]
        denied = _memos(base, "search", "--cube", "demo", "Lisbon", api_key=bob, ok=False)
        assert "PERMISSION_DENIED" in denied and "NO_GRANT" in denied
        _memos(base, "share", "--cube", "demo", "--with", "bob", "--role", "reader")
        assert "Lisbon" in _memos(base, "search", "--cube", "demo", "Lisbon", api_key=bob)
        _memos(base, "add", "--cube", "demo", "bob was here", api_key=bob, ok=False)
        _memos(base, "revoke", "--cube", "demo", "--from", "bob")
        time.sleep(1)
        _memos(base, "search", "--cube", "demo", "Lisbon", api_key=bob, ok=False)
        assert "intact" in _memos(base, "audit", "verify")
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
