from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GovernanceSettings(ServiceSettings):
    """MEMOS_GOVERNANCE_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_GOVERNANCE_", extra="ignore", frozen=True)
