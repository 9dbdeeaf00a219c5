"""The object store port: blobs (KV caches, adapters, exports) by key.

Two backends behind one interface, chosen by URL in one place (``open_blob_store``):

- ``file:///var/lib/memos/blobs``: a directory (the embedded default). Writes go to a temporary
  file that is fsynced and renamed, so a reader sees a whole blob or none.
- ``s3://bucket/optional/prefix``: any S3 server (MinIO in production) through the ``minio`` client.

Keys are slash-separated relative paths of safe characters; callers build them, never users.
The interface is synchronous: it runs in model threads (Triton) or behind ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from .durable import write_durably
from .errors import InvalidArgument, NotFound, Unavailable
from .settings import BlobStoreSettings

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*(/[A-Za-z0-9][A-Za-z0-9._=-]*)*$")


def check_key(key: str) -> str:
    if len(key) > 512 or not _KEY.match(key) or ".." in key:
        raise InvalidArgument(f"blob key {key[:80]!r} is malformed", reason="MALFORMED_BLOB_KEY")
    return key


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size_bytes: int


class BlobStore(Protocol):
    """What every backend does. ``get`` of a missing key raises NotFound."""

    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def stat(self, key: str) -> BlobInfo | None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]: ...


class DirectoryBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        write_durably(self._path(key), data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {key} does not exist", reason="BLOB_NOT_FOUND") from None

    def stat(self, key: str) -> BlobInfo | None:
        try:
            return BlobInfo(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield BlobInfo(key, path.stat().st_size)


class S3BlobStore:
    def __init__(
        self, bucket: str, prefix: str, *, endpoint: str, access_key: str, secret_key: str, secure: bool
    ) -> None:
        from minio import Minio

        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        try:
            if not self._client.bucket_exists(bucket):
                self._client.make_bucket(bucket)
        except Exception as err:  # any transport or S3 error means the store is unusable
            raise Unavailable(
                f"object store {endpoint} unreachable: {err}", reason="BLOB_STORE_DOWN"
            ) from err

    def _object(self, key: str) -> str:
        return self._prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(self._bucket, self._object(key), io.BytesIO(data), len(data))

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self._client.get_object(self._bucket, self._object(key))
        except S3Error as err:
            if err.code == "NoSuchKey":
                raise NotFound(f"blob {key} does not exist", reason="BLOB_NOT_FOUND") from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> BlobInfo | None:
        from minio.error import S3Error

        try:
            return BlobInfo(key, self._client.stat_object(self._bucket, self._object(key)).size)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise

    def delete(self, key: str) -> None:
        self._client.remove_object(self._bucket, self._object(key))

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for obj in self._client.list_objects(self._bucket, prefix=self._prefix + prefix, recursive=True):
            yield BlobInfo(obj.object_name[len(self._prefix) :], obj.size)


def open_blob_store(settings: BlobStoreSettings) -> BlobStore:
    """The backend ``settings.blob_store_url`` names: ``file:///dir``, a plain path, or ``s3://bucket/prefix``."""
    url = settings.blob_store_url
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return DirectoryBlobStore(Path(parsed.path if parsed.scheme else url).expanduser())
    if parsed.scheme == "s3":
        if not settings.s3_endpoint:
            raise InvalidArgument("an s3:// blob store needs s3_endpoint", reason="MISSING_S3_ENDPOINT")
        return S3BlobStore(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
        )
    raise InvalidArgument(f"unknown blob store scheme {parsed.scheme!r}", reason="BAD_BLOB_STORE_URL")
