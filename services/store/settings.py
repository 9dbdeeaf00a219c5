from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class StoreSettings(ServiceSettings):
    """MEMOS_STORE_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_STORE_", extra="ignore", frozen=True)
