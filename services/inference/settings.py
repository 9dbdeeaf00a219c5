from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import BlobStoreSettings, LanguageModelSettings, ServiceSettings


class InferenceSettings(ServiceSettings, BlobStoreSettings, LanguageModelSettings):
    """MEMOS_INFERENCE_*. grpc_addr is the gRPC health endpoint; Triton listens on its own ports."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_INFERENCE_", extra="ignore", frozen=True)

    triton_address: str = "127.0.0.1"
    triton_grpc_port: int = 18001
    triton_http_port: int = 18000
    triton_metrics_port: int = 18002
    embed_runs: int = Field(
        0, ge=0, description="embedding batches run at once, one thread each (0: one a core)"
    )
    embed_max_batch_size: int = Field(256, gt=0)
    embed_queue_delay_microseconds: int = Field(1000, ge=0, description="dynamic batching window")
    log_dir: Path | None = Field(None, description="where Triton's own log goes; default: a temporary file")
    generate_enabled: bool = Field(True, description="serve generate and kv_build (False: embeddings only)")
    kv_dtype: Literal["float16", "bfloat16", "float32"] = Field("float16", description="stored KV precision")
    kv_hot_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="bytes of decoded KV caches kept in memory"
    )
    triton_watch_seconds: float = Field(2.0, gt=0, description="how often Triton's liveness is checked")
    triton_max_restarts: int = Field(3, ge=0, description="restarts of a dead Triton allowed per window")
    triton_restart_window_seconds: float = Field(600.0, gt=0)
    max_adapters: int = Field(
        8, gt=0, description="LoRA adapters kept attached to the model (least recently used go)"
    )
