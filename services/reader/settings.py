from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import EmbedderSettings, ServiceSettings


class ReaderSettings(ServiceSettings, EmbedderSettings):
    """MEMOS_READER_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_READER_", extra="ignore", frozen=True)

    max_messages: int = Field(1000, gt=0, description="messages in one AddMessages request")
    max_text_bytes: int = Field(64 * 1024, gt=0, description="UTF-8 bytes of one message or caption")
    max_document_bytes: int = Field(4 * 1024 * 1024, gt=0)
    document_chunk_tokens: int = Field(200, gt=10, description="target size of a document chunk")
    piece_tokens: int = Field(120, gt=10, description="target size of a piece of a long turn")
    context_tokens: int = Field(
        120,
        ge=0,
        description="pieces up to this size are also indexed with up to this much of each neighbour",
    )
    statement_piece_tokens: int = Field(
        60,
        ge=0,
        description="pieces longer than this also give a fact item per statement the speaker makes "
        "of themselves in them; 0: none",
    )
    digest_tokens: int = Field(
        150,
        ge=0,
        description="each speaker's statements of a session are also gathered into digests of up to "
        "this many tokens; 0: none",
    )
    context_weight: float = Field(
        0.5, ge=0, description="weight of each neighbour's vector in a piece's context key"
    )
    publish_concurrency: int = Field(64, gt=0, description="write commands in flight at once")
    wait_applied_timeout_seconds: float = Field(60.0, gt=0)
    max_items_per_cube: int = Field(
        200_000, ge=0, description="memories a cube may hold (all states); 0: no limit"
    )
    vault_addr: str = Field("127.0.0.1:50052", description="where the cube's size is read")
    vault_timeout_seconds: float = Field(10.0, gt=0)
