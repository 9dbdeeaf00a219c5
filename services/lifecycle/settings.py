from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class LifecycleSettings(ServiceSettings):
    """MEMOS_LIFECYCLE_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_LIFECYCLE_", extra="ignore", frozen=True)
