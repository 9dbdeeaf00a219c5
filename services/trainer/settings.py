from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import (
    BlobStoreSettings,
    EmbedderSettings,
    LanguageModelSettings,
    ServiceSettings,
)
from services.inference.lora import TrainConfig

DEFAULT = TrainConfig()


class TrainerSettings(ServiceSettings, BlobStoreSettings, EmbedderSettings, LanguageModelSettings):
    """MEMOS_TRAINER_*. The training settings are those of ``services.inference.lora.TrainConfig``."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_TRAINER_", extra="ignore", frozen=True)

    vault_addr: str = "127.0.0.1:50052"
    lifecycle_addr: str = "127.0.0.1:50055"
    call_timeout_seconds: float = Field(30.0, gt=0)
    wait_applied_timeout_seconds: float = Field(30.0, gt=0)
    job_ack_wait_seconds: float = Field(
        60.0, gt=0, description="a job whose trainer stops reporting progress this long is handed out again"
    )
    job_max_attempts: int = Field(3, gt=0, description="times a job is tried before it is left failed")
    rank: int = Field(DEFAULT.rank, gt=0, le=256)
    top_layers: int = Field(
        DEFAULT.top_layers,
        ge=0,
        description="the adapter goes into the last this-many decoder layers; 0: into every layer",
    )
    epochs: int = Field(DEFAULT.epochs, gt=0, le=100)
    learning_rate: float = Field(DEFAULT.learning_rate, gt=0)
    replay_weight: float = Field(
        DEFAULT.replay_weight, ge=0, description="pull towards the base model on its own text; 0 turns it off"
    )
    replay_pool: int = Field(DEFAULT.replay_pool, gt=0)
    max_ppl_increase: float = Field(
        DEFAULT.max_ppl_increase,
        ge=0,
        description="general-text perplexity budget (0.05: at most 5% above the base)",
    )
    eval_questions: int = Field(20, ge=0, description="held-out phrasings asked after training (0: none)")
