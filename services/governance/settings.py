from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import BlobStoreSettings, ServiceSettings


class GovernanceSettings(ServiceSettings, BlobStoreSettings):
    """MEMOS_GOVERNANCE_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_GOVERNANCE_", extra="ignore", frozen=True)

    signing_key_file: Path | None = Field(
        None, description="Ed25519 private key (PEM) that tokens are signed with; required"
    )
    token_ttl_seconds: float = Field(900.0, ge=30, le=24 * 3600, description="how long a token is valid")
    bootstrap_admin_key: SecretStr = Field(
        SecretStr(""), description="API key of principals/admin, made sure of at start (`make run` sets it)"
    )
    bootstrap_service_key: SecretStr = Field(
        SecretStr(""),
        description="API key of principals/mesh, the service principal the other services call with",
    )
    audit_page_max: int = Field(1000, gt=0, description="most audit records in one ListAudit page")
    audit_scan_max: int = Field(10_000, gt=0, description="most records one ListAudit page reads to fill it")
    # Erasure reaches the vault (index points), the lifecycle (adapter rebuilds) and the object
    # store (KV caches, adapters).
    vault_addr: str = "127.0.0.1:50052"
    lifecycle_addr: str = "127.0.0.1:50055"
    call_timeout_seconds: float = Field(60.0, gt=0)
    wait_applied_timeout_seconds: float = Field(60.0, gt=0)
