"""Start, watch and stop a whole mesh on one machine: nats-server (JetStream on disk) and eight services.

Used by ``make run``, the benchmarks (which start a mesh when none runs) and the integration tests
(which also kill and restart single services).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memos_sdk.endpoints import SERVICES, LocalPorts
from services.common.auth import generate_signing_key, new_api_key

log = logging.getLogger(__name__)


class MeshError(RuntimeError):
    pass


def write_nats_config(
    config: Path, store: Path, *, host: str, port: int, monitor_port: int | None = None
) -> Path:
    """A JetStream server config; sync_interval: always fsyncs every write, so an acknowledged
    write survives power loss too, not only a crash."""
    store.mkdir(parents=True, exist_ok=True)
    monitor = f"http: {host}:{monitor_port}\n" if monitor_port else ""
    config.write_text(
        f'server_name: "memos-local"\nlisten: {host}:{port}\n{monitor}'
        f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}\n'
    )
    return config


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise MeshError(f"{name} not found; run `make setup`")
    return found


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the OS picks for a bind to port 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now (for servers started on loopback by tests and benchmarks),
    never one this process handed out before. Below the range the OS picks from: a server that
    binds port 0 meanwhile cannot take it before its owner binds it."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(10000, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port on {host} below {low}")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def health_status(addr: str, timeout: float = 1.0) -> int:
    """The overall health status a service reports (SERVING=1), or 0 when it does not answer."""
    try:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
            return reply.status
    except grpc.RpcError:
        return 0


class MeshKeys:
    """A local mesh's key material under one directory (mode 0700): the token-signing key pair,
    the local admin's API key and the service principal's; made once, reused by later starts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.signing_key = directory / "signing.pem"
        self.public_key = directory / "public.pem"
        generate_signing_key(self.signing_key, self.public_key)
        self.directory.chmod(0o700)
        self.admin_key = self._key("admin.key")
        self.service_key = self._key("service.key")

    def _key(self, name: str) -> str:
        path = self.directory / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(new_api_key()[1])
        return path.read_text().strip()


class Mesh:
    """A mesh whose state lives under ``run_dir`` (nats/, vault/, logs/)."""

    def __init__(
        self, run_dir: Path, ports: LocalPorts | None = None, *, extra_env: dict[str, str] | None = None
    ):
        self.run_dir = Path(run_dir).resolve()
        self.ports = ports or LocalPorts()
        self.logs = self.run_dir / "logs"
        self.auth = MeshKeys(self.run_dir / "auth")
        self._extra_env = extra_env or {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def admin_key(self) -> str:
        """The API key of principals/admin (made at the first start, kept in run_dir/auth)."""
        return self.auth.admin_key

    # -- environment of each process --------------------------------------------------------

    def service_env(self, service: str) -> dict[str, str]:
        prefix = f"MEMOS_{service.upper()}_"
        p = self.ports
        env = {
            "GRPC_ADDR": p.addr(service),
            "NATS_URL": p.nats_url,
            "INFERENCE_ADDR": f"{p.host}:{p.triton_grpc}",
            "LOG_FORMAT": "json",
            "AUTH_PUBLIC_KEY_FILE": str(self.auth.public_key),
            "SERVICE_API_KEY": self.auth.service_key,
            "GOVERNANCE_ADDR": p.addr("governance"),
        }
        if service == "governance":
            env |= {
                "VAULT_ADDR": p.addr("vault"),
                "LIFECYCLE_ADDR": p.addr("lifecycle"),
                "BLOB_STORE_URL": str(self.run_dir / "blobs"),
                "SIGNING_KEY_FILE": str(self.auth.signing_key),
                "BOOTSTRAP_ADMIN_KEY": self.auth.admin_key,
                "BOOTSTRAP_SERVICE_KEY": self.auth.service_key,
            }
        if service == "vault":
            env["DATA_DIR"] = str(self.run_dir / "vault")
        if service in ("reader", "scheduler", "lifecycle", "trainer"):
            env["VAULT_ADDR"] = p.addr("vault")
        if service == "trainer":
            env |= {"LIFECYCLE_ADDR": p.addr("lifecycle"), "BLOB_STORE_URL": str(self.run_dir / "blobs")}
        if service == "inference":
            env |= {
                "TRITON_ADDRESS": p.host,
                "TRITON_GRPC_PORT": str(p.triton_grpc),
                "TRITON_HTTP_PORT": str(p.triton_http),
                "TRITON_METRICS_PORT": str(p.triton_metrics),
                "LOG_DIR": str(self.logs),
                "BLOB_STORE_URL": str(self.run_dir / "blobs"),
            }
        full = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        full |= {prefix + k: v for k, v in env.items()}
        full |= self._extra_env
        return full

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            self._procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def start_nats(self) -> None:
        config = write_nats_config(
            self.run_dir / "nats.conf",
            self.run_dir / "nats",
            host=self.ports.host,
            port=self.ports.nats,
            monitor_port=self.ports.nats_monitor,
        )
        self._spawn("nats", [_bin("nats-server"), "-c", str(config)], dict(os.environ))
        url = f"http://{self.ports.host}:{self.ports.nats_monitor}/healthz?js-enabled-only=true"
        self._wait(lambda: _http_ok(url), "nats", timeout=30)

    def start_service(self, service: str) -> None:
        self._spawn(service, [sys.executable, "-m", f"services.{service}"], self.service_env(service))

    def wait_serving(self, services: tuple[str, ...] = SERVICES, timeout: float = 300) -> None:
        for service in services:
            addr = self.ports.addr(service)
            self._wait(
                lambda a=addr: health_status(a) == health_pb2.HealthCheckResponse.SERVING, service, timeout
            )

    def _wait(self, ready, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise MeshError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise MeshError(f"{name} not ready after {timeout:.0f}s:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self, timeout: float = 300) -> None:
        """Start everything and wait until every service reports SERVING."""
        busy = [p for p in self.ports.all() if port_in_use(self.ports.host, p)]
        if busy:
            raise MeshError(f"ports already in use: {busy} (is a mesh running? try another --port-base)")
        try:
            self.start_nats()
            for service in SERVICES:
                self.start_service(service)
            self.wait_serving(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def exited(self) -> dict[str, int]:
        """Processes that ended on their own, with their exit codes."""
        return {n: p.returncode for n, p in self._procs.items() if p.poll() is not None}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self._procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def stop_process(self, name: str, timeout: float = 20) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, timeout)
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Services in reverse start order (front doors first), then the bus."""
        for name in [*reversed(SERVICES), "nats"]:
            self.stop_process(name)

    def __enter__(self) -> Mesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return reply.status == 200
    except OSError:
        return False
