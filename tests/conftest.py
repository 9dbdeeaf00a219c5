"""Real parts for the tests: a nats-server per test (JetStream in a temp dir), one Triton for the
session (the inference service as a process), and the other services in-process on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from memos.governance.v1 import governance_pb2
from memos_sdk import Endpoints, MemosClient
from memos_sdk.channels import Tls
from services.common.auth import TokenSigner, load_private_key
from services.common.grpc_host import ServiceHost
from services.governance.server import setup as governance_setup
from services.governance.settings import GovernanceSettings
from services.launcher.mesh import MeshKeys, _bin, free_port, health_status, port_in_use, write_nats_config
from services.launcher.weed import S3Server, start_s3
from services.lifecycle.server import setup as lifecycle_setup
from services.lifecycle.settings import LifecycleSettings
from services.reader.server import setup as reader_setup
from services.reader.settings import ReaderSettings
from services.scheduler.server import setup as scheduler_setup
from services.scheduler.settings import SchedulerSettings
from services.trainer.server import setup as trainer_setup
from services.trainer.settings import TrainerSettings
from services.vault.server import setup as vault_setup
from services.vault.settings import VaultSettings

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One tracer provider for the whole test process, recording in memory (services reuse it).
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s")
        time.sleep(0.1)


@dataclass
class NatsServer:
    url: str
    port: int
    store: Path
    proc: subprocess.Popen

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def until(probe, what: str, within: float = 30.0):
    """``probe()``'s first true value, awaited every 0.2 s; TimeoutError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


def start_nats(store: Path, port: int | None = None) -> NatsServer:
    port = port or free_port()
    config = write_nats_config(store.parent / f"nats-{port}.conf", store, host="127.0.0.1", port=port)
    proc = subprocess.Popen(
        [_bin("nats-server"), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: port_in_use("127.0.0.1", port), 20, "nats-server", proc)
    return NatsServer(f"nats://127.0.0.1:{port}", port, store, proc)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


@dataclass(frozen=True)
class Inference:
    addr: str  # Triton gRPC
    blobs: Path  # its object store (a directory)


@contextlib.contextmanager
def running_inference(log_dir: Path, **env: str) -> Iterator[tuple[Inference, subprocess.Popen]]:
    """The inference service as a real process: PyTriton serving embed, generate and kv_build
    (``MEMOS_INFERENCE_*`` overrides in ``env``)."""
    grpc_port, health_port = free_port(), free_port()
    blobs = log_dir / "blobs"
    env = {
        **os.environ,
        "MEMOS_INFERENCE_GRPC_ADDR": f"127.0.0.1:{health_port}",
        "MEMOS_INFERENCE_TRITON_GRPC_PORT": str(grpc_port),
        "MEMOS_INFERENCE_TRITON_HTTP_PORT": str(free_port()),
        "MEMOS_INFERENCE_TRITON_METRICS_PORT": str(free_port()),
        "MEMOS_INFERENCE_LOG_DIR": str(log_dir),
        "MEMOS_INFERENCE_BLOB_STORE_URL": str(blobs),
        **env,
    }
    with open(log_dir / "inference.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.inference"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
    try:
        wait_for(lambda: health_status(f"127.0.0.1:{health_port}") == 1, 300, "inference", proc)
        yield Inference(f"127.0.0.1:{grpc_port}", blobs), proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inference]:
    with running_inference(tmp_path_factory.mktemp("inference")) as (running, _):
        yield running


@pytest.fixture(scope="session")
def triton_addr(inference: Inference) -> str:
    return inference.addr


def mesh_keys(data_dir: Path) -> MeshKeys:
    """The key material of a test mesh (made once per directory, as `make run` does)."""
    return MeshKeys(data_dir / "auth")


def auth_fields(keys: MeshKeys, governance_addr: str = "") -> dict[str, object]:
    """Settings every service of a test mesh shares: the public key, the service key, governance,
    and mutual TLS when the key directory holds a tls/ PKI (tests/security/test_mtls.py)."""
    fields: dict[str, object] = {
        "auth_public_key_file": keys.public_key,
        "service_api_key": keys.service_key,
        "governance_addr": governance_addr or "127.0.0.1:9",  # nothing there: no service tokens
    }
    tls = keys.directory / "tls"
    if (tls / "ca.pem").exists():
        fields |= {
            "tls_ca_file": tls / "ca.pem",
            "tls_cert_file": tls / "service.pem",
            "tls_key_file": tls / "service.key",
        }
    return fields


def client_tls(keys: MeshKeys) -> Tls | None:
    tls = keys.directory / "tls"
    return (
        Tls.from_files(tls / "ca.pem", tls / "client.pem", tls / "client.key")
        if (tls / "ca.pem").exists()
        else None
    )


def mint_token(
    keys: MeshKeys, principal: str = "principals/admin", *, admin: bool = True, ttl: float = 3600
) -> str:
    """A token signed with the mesh's key, for tests that run no governance service."""
    signer = TokenSigner(load_private_key(keys.signing_key), ttl)
    kind = governance_pb2.PRINCIPAL_KIND_USER
    return signer.issue(governance_pb2.Principal(name=principal, kind=kind, admin=admin))[0]


def governance_settings(nats_url: str, keys: MeshKeys, **extra: object) -> GovernanceSettings:
    return GovernanceSettings(
        nats_url=nats_url,
        log_format="text",
        signing_key_file=keys.signing_key,
        bootstrap_admin_key=keys.admin_key,
        bootstrap_service_key=keys.service_key,
        **auth_fields(keys),
        **extra,
    )


def service_settings(
    nats_url: str, triton_addr: str, data_dir: Path, governance_addr: str = ""
) -> dict[str, object]:
    """Settings of reader, vault and scheduler for an in-process mesh (keys under data_dir/auth)."""
    keys = mesh_keys(data_dir)
    common = {
        "nats_url": nats_url,
        "inference_addr": triton_addr,
        "log_format": "text",
        **auth_fields(keys, governance_addr),
    }
    return {
        "keys": keys,
        "vault": VaultSettings(**common, data_dir=data_dir / "vault", wait_applied_timeout_seconds=60),
        # Digests are off unless a test turns them on: tests count the items a request makes.
        "reader": lambda vault_addr, **extra: ReaderSettings(
            **common, vault_addr=vault_addr, **{"digest_tokens": 0, **extra}
        ),
        # Activation memory is built on request (Preload) unless a test turns automatic preloading on.
        "scheduler": lambda vault_addr, **extra: SchedulerSettings(
            **common, vault_addr=vault_addr, **{"auto_preload": False, **extra}
        ),
    }


def lifecycle_settings(
    nats_url: str, vault_addr: str, keys: MeshKeys, governance_addr: str, **extra: object
) -> LifecycleSettings:
    return LifecycleSettings(
        nats_url=nats_url,
        vault_addr=vault_addr,
        log_format="text",
        **auth_fields(keys, governance_addr),
        **extra,
    )


@dataclass
class InProcessMesh:
    client: MemosClient
    vault: ServiceHost
    reader: ServiceHost
    scheduler: ServiceHost
    nats: NatsServer
    governance: ServiceHost
    keys: MeshKeys
    endpoints: Endpoints
    lifecycle: ServiceHost | None = None

    def client_as(self, api_key: str, **endpoints: str) -> MemosClient:
        """Another client of this mesh, calling with ``api_key`` (and other ``endpoints`` if given)."""
        return MemosClient(
            dataclasses.replace(self.endpoints, **endpoints),
            api_key=api_key,
            tls=client_tls(self.keys),
            timeout_seconds=120,
        )


@contextlib.asynccontextmanager
async def in_process_mesh(
    nats: NatsServer,
    triton_addr: str,
    data_dir: Path,
    *,
    lifecycle: dict[str, object] | None = None,
    trainer: dict[str, object] | None = None,
    blobs: Path | None = None,
    reader_settings: dict[str, object] | None = None,
    vault_settings: dict[str, object] | None = None,
    **scheduler: object,
) -> AsyncIterator[InProcessMesh]:
    """Vault, reader, scheduler and governance in this process; the lifecycle too when given its
    settings, and the trainer (which needs the lifecycle) when given its settings. ``blobs`` is
    the object store governance erases KV caches and adapters from. The client calls as the admin."""
    keys = mesh_keys(data_dir)
    # Governance starts last (it reaches the vault and lifecycle), at an address the others know.
    governance_addr = f"127.0.0.1:{free_port()}"
    async with contextlib.AsyncExitStack() as stack:
        settings = service_settings(nats.url, triton_addr, data_dir, governance_addr)
        vault_config = settings["vault"].model_copy(update=vault_settings or {})
        vault = await stack.enter_async_context(ServiceHost("vault", vault_config, vault_setup))
        vault_addr = f"127.0.0.1:{vault.port}"
        reader = await stack.enter_async_context(
            ServiceHost("reader", settings["reader"](vault_addr, **(reader_settings or {})), reader_setup)
        )
        scheduler_host = await stack.enter_async_context(
            ServiceHost("scheduler", settings["scheduler"](vault_addr, **scheduler), scheduler_setup)
        )
        lifecycle_host = None
        if lifecycle is not None:
            lifecycle_host = await stack.enter_async_context(
                ServiceHost(
                    "lifecycle",
                    lifecycle_settings(nats.url, vault_addr, keys, governance_addr, **lifecycle),
                    lifecycle_setup,
                )
            )
        if trainer is not None:
            assert lifecycle_host is not None, "the trainer needs the lifecycle"
            trainer_settings = TrainerSettings(
                nats_url=nats.url,
                vault_addr=vault_addr,
                lifecycle_addr=f"127.0.0.1:{lifecycle_host.port}",
                inference_addr=triton_addr,
                log_format="text",
                **auth_fields(keys, governance_addr),
                **trainer,
            )
            await stack.enter_async_context(ServiceHost("trainer", trainer_settings, trainer_setup))
        governance = await stack.enter_async_context(
            ServiceHost(
                "governance",
                governance_settings(
                    nats.url,
                    keys,
                    grpc_addr=governance_addr,
                    vault_addr=vault_addr,
                    lifecycle_addr=f"127.0.0.1:{lifecycle_host.port}" if lifecycle_host else "127.0.0.1:9",
                    blob_store_url=str(blobs or data_dir / "blobs"),
                ),
                governance_setup,
            )
        )
        endpoints = Endpoints(
            reader=f"127.0.0.1:{reader.port}",
            vault=vault_addr,
            scheduler=f"127.0.0.1:{scheduler_host.port}",
            nats_url=nats.url,
            lifecycle=f"127.0.0.1:{lifecycle_host.port}" if lifecycle_host else "",
            governance=governance_addr,
        )
        client = await stack.enter_async_context(
            MemosClient(endpoints, api_key=keys.admin_key, tls=client_tls(keys), timeout_seconds=120)
        )
        yield InProcessMesh(
            client, vault, reader, scheduler_host, nats, governance, keys, endpoints, lifecycle_host
        )


@pytest.fixture
async def mesh(nats: NatsServer, triton_addr: str, tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    async with in_process_mesh(nats, triton_addr, tmp_path) as running:
        yield running


@pytest.fixture
def cube() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS weed mini) for the session."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()
