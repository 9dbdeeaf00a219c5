from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class LifecycleSettings(ServiceSettings):
    """MEMOS_LIFECYCLE_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_LIFECYCLE_", extra="ignore", frozen=True)

    vault_addr: str = "127.0.0.1:50052"
    vault_timeout_seconds: float = Field(30.0, gt=0)
    wait_applied_timeout_seconds: float = Field(30.0, gt=0)
    sweep_interval_seconds: float = Field(
        60.0, gt=0, description="how often TTL, decay and promotion rules run over every cube with a policy"
    )
    default_resolve_conflicts: bool = Field(
        True, description="merge restatements and supersede contradictions in cubes without a policy"
    )
    duplicate_similarity: float = Field(
        0.9, gt=0, le=1, description="cosine at or above which a same-speaker memory restates another"
    )
    conflict_similarity: float = Field(
        0.75,
        gt=0,
        le=1,
        description="cosine at or above which two same-speaker memories talk about one thing",
    )
    conflict_candidates: int = Field(
        5, gt=0, le=50, description="nearest live memories checked for a conflict"
    )
    distill_max_memories: int = Field(
        500, gt=0, le=500, description="memories a Promote without names distils (the first, by name)"
    )
