from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import EmbedderSettings, ServiceSettings


class VaultSettings(ServiceSettings, EmbedderSettings):
    """MEMOS_VAULT_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_VAULT_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path(".run/vault"), description="the Qdrant Edge shard lives under it")
    apply_batch_size: int = Field(256, gt=0, description="write commands applied together")
    apply_ack_wait_seconds: float = Field(30.0, gt=0, description="redelivery delay of an unacked command")
    usage_fold_seconds: float = Field(
        2.0, ge=0, description="accesses gather this long between folds into the usage table (0: at once)"
    )
    created_neighbours: int = Field(
        5, ge=0, le=50, description="closest memories of the same speaker named in a created event (0: none)"
    )
    wait_applied_timeout_seconds: float = Field(30.0, gt=0)
    bm25_avg_len: float = Field(
        32.0, gt=0, description="expected item length in tokens, for BM25 length norm"
    )
    index_flush_seconds: float = Field(
        30.0, gt=0, description="how often the index's changes are flushed (bounds its write-ahead log)"
    )
    warm_up_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="at start, how long to wait for the index's term counts and records in memory "
        "before serving anyway (about 5 s for 100,000 memories)",
    )
    search_depth: int = Field(100, gt=0, le=1000, description="nearest points fetched per key and side")
    sparse_weight: float = Field(
        0.6, ge=0, description="weight of the normalised BM25 score against the dense cosine"
    )
    page_token_secret: str = Field("memos-page-token", description="keys the page-token checksum")
