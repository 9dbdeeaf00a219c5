from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import GeneratorSettings, QueryEmbedderSettings, ServiceSettings


class SchedulerSettings(ServiceSettings, QueryEmbedderSettings, GeneratorSettings):
    """MEMOS_SCHEDULER_*."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_SCHEDULER_", extra="ignore", frozen=True)

    vault_addr: str = "127.0.0.1:50052"
    candidates: int = Field(
        60,
        gt=0,
        le=200,
        description="fused candidates asked of the vault, and at least twice top_k (a span takes about two)",
    )
    time_boost: float = Field(
        0.1, ge=0, le=1, description="added to the score of memories said in the time a query names"
    )
    speaker_boost: float = Field(
        0.1, ge=0, le=1, description="added to the score of memories said by a speaker the query names"
    )
    join_ratio: float = Field(
        0.7, gt=0, le=1, description="a neighbour scoring at least this share of a hit joins its span"
    )
    max_span: int = Field(4, gt=0, le=16, description="memories in one span (1: never join)")
    reply_tokens: int = Field(
        60,
        ge=0,
        description="a reply this short joins the question before it in a span whatever it scores (0: never)",
    )
    question_tokens: int = Field(
        60,
        ge=0,
        description="the question a reply answers, this short, joins the reply's span whatever it scores "
        "(0: never)",
    )
    length_cost: float = Field(
        0.1,
        ge=0,
        le=1,
        description="score an item loses for every 100 tokens beyond free_tokens, so that a long span "
        "must match better than short items to come before them",
    )
    free_tokens: int = Field(120, ge=0, description="tokens an item has at no cost: one reader piece")
    vault_timeout_seconds: float = Field(10.0, gt=0)
    record_usage: bool = Field(True, description="count the memories searches and chats return (usage)")
    usage_linger_seconds: float = Field(
        1.0, ge=0, description="uses gather this long before one record per cube goes out (0: at once)"
    )
    chat_top_k: int = Field(8, gt=0, le=50, description="memories retrieved for a chat turn")
    chat_memory_budget_tokens: int = Field(
        600, ge=0, description="tokens of retrieved memories placed as text"
    )
    chat_max_new_tokens: int = Field(128, gt=0, le=1024)
    activation_budget_tokens: int = Field(1024, gt=0, description="tokens of memories in a cube's KV prefix")
    activation_predicted: int = Field(8, ge=0, description="memories a next-scene hint adds to the prefix")
    activation_scan_limit: int = Field(2000, gt=0, description="memories considered for the core set")
    auto_preload: bool = Field(True, description="rebuild activation memory after memory changes and chats")
    preload_debounce_seconds: float = Field(3.0, ge=0)
