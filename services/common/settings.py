"""Typed settings from prefixed environment variables; nothing else reads os.environ."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set ``env_prefix`` (MEMOS_<SERVICE>_)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)
    service_name: ClassVar[str] = "service"

    grpc_addr: str = Field("127.0.0.1:0", description="host:port the gRPC server binds; port 0 picks one")
    nats_url: str = "nats://127.0.0.1:14222"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = Field("", description="OTLP gRPC endpoint when otel_exporter=otlp")
    shutdown_grace_seconds: float = Field(5.0, gt=0)
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest gRPC message accepted")


class InferenceClientSettings(BaseSettings):
    inference_addr: str = Field("127.0.0.1:18001", description="Triton gRPC endpoint")


class EmbedderSettings(InferenceClientSettings):
    """How a service reaches the embedding model on Triton (mixed into service settings)."""

    embed_model: str = "embed"
    embed_dim: int = 384
    embed_batch_size: int = Field(128, gt=0)
    embed_timeout_seconds: float = Field(60.0, gt=0)


class BlobStoreSettings(BaseSettings):
    """Where blobs (KV caches, adapters) live (mixed into service settings)."""

    blob_store_url: str = Field(
        ".run/blobs", description="file:///dir, a directory path, or s3://bucket/prefix (with s3_endpoint)"
    )
    s3_endpoint: str = Field("", description="host:port of the S3 server (MinIO) for s3:// URLs")
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = Field(True, description="HTTPS to the S3 server")


class GeneratorSettings(InferenceClientSettings):
    """How a service reaches generation and KV building on Triton (mixed into service settings)."""

    generate_model: str = "generate"
    kv_build_model: str = "kv_build"
    generate_timeout_seconds: float = Field(300.0, gt=0)
