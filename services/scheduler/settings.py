from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import EmbedderSettings, ServiceSettings


class SchedulerSettings(ServiceSettings, EmbedderSettings):
    """MEMOS_SCHEDULER_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_SCHEDULER_", extra="ignore", frozen=True)

    vault_addr: str = "127.0.0.1:50052"
    candidates: int = Field(60, gt=0, le=200, description="fused candidates asked of the vault")
    vault_timeout_seconds: float = Field(10.0, gt=0)
