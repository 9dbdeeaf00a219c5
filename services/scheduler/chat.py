"""One chat turn: retrieve, place memories (KV prefix or quoted text), generate, report.

Placement:
- the cube's activation memories go in as the KV cache of their rendered prefix when it is fresh;
  when it is stale their current versions go in as text (or it is rebuilt first, if asked);
- retrieved memories that are not in the prefix go in as quoted text, best first, within the
  memory token budget.
The last response of the stream reports every memory the model saw and how, and the token counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from memos.scheduler.v1 import scheduler_pb2
from memos.type.v1 import activation_pb2, memory_pb2
from memos.vault.v1 import vault_pb2_grpc
from services.common import validation
from services.common.clients import live_adapters
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.generation import GenerateRequest, GenerateResult, Generator
from services.common.prompt import render_prefix, render_rest

from .activation import Activations
from .retrieval import Retriever
from .settings import SchedulerSettings

Outcome = scheduler_pb2.ActivationOutcome
ROLES = ("user", "assistant", "system")
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 8192


@dataclass(frozen=True)
class Turn:
    cube_id: str
    messages: list[scheduler_pb2.ChatMessage]
    max_new_tokens: int
    top_k: int
    memory_budget: int


def check(request: scheduler_pb2.ChatRequest, settings: SchedulerSettings) -> Turn:
    cube_id = validation.cube_id(request.cube_id)
    if not request.messages:
        raise InvalidArgument("messages is empty", reason="EMPTY_MESSAGES", field="messages")
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidArgument(f"at most {MAX_MESSAGES} messages", reason="TOO_MANY_MESSAGES")
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role must be one of {', '.join(ROLES)}", reason="INVALID_ROLE"
            )
        if not message.content.strip() or len(message.content) > MAX_MESSAGE_CHARS:
            raise InvalidArgument(
                f"messages[{i}].content must have 1..{MAX_MESSAGE_CHARS} characters", reason="INVALID_CONTENT"
            )
    if request.messages[-1].role != "user":
        raise InvalidArgument("the last message must be the user's", reason="LAST_NOT_USER")
    if not 0 <= request.max_new_tokens <= 1024:
        raise InvalidArgument("max_new_tokens must be 0..1024", reason="INVALID_MAX_NEW_TOKENS")
    if not 0 <= request.top_k <= 50:
        raise InvalidArgument("top_k must be 0..50", reason="INVALID_TOP_K")
    if request.memory_token_budget < 0:
        raise InvalidArgument("memory_token_budget must not be negative", reason="INVALID_BUDGET")
    return Turn(
        cube_id=cube_id,
        messages=list(request.messages),
        max_new_tokens=request.max_new_tokens or settings.chat_max_new_tokens,
        top_k=request.top_k or settings.chat_top_k,
        memory_budget=request.memory_token_budget or settings.chat_memory_budget_tokens,
    )


def _use(memory: memory_pb2.Memory, placement: int, score: float = 0.0) -> scheduler_pb2.MemoryUse:
    return scheduler_pb2.MemoryUse(
        name=memory.name,
        version=memory.version,
        kind=memory.kind or memory_pb2.MEMORY_KIND_PLAINTEXT,
        placement=placement,
        score=score,
    )


class Chat:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        retriever: Retriever,
        activations: Activations,
        generator: Generator,
        vault: vault_pb2_grpc.VaultServiceStub,
    ) -> None:
        self._settings = settings
        self._vault = vault
        self._retriever = retriever
        self._activations = activations
        self._generator = generator

    async def _prefix(
        self, cube_id: str, mode: int
    ) -> tuple[list[memory_pb2.Memory], activation_pb2.Activation | None, int]:
        """(prefix memories, the activation whose cache to inject or None, outcome)."""
        if mode == scheduler_pb2.ACTIVATION_MODE_OFF:
            return [], None, Outcome.ACTIVATION_OUTCOME_OFF
        record = await self._activations.current(cube_id)
        if record is None:
            return [], None, Outcome.ACTIVATION_OUTCOME_NONE
        fresh, memories = await self._activations.memories_now(record)
        if fresh:
            return memories, record, Outcome.ACTIVATION_OUTCOME_USED
        if mode == scheduler_pb2.ACTIVATION_MODE_REBUILD_STALE:
            rebuilt, _ = await self._activations.build(cube_id)
            if rebuilt is not None:
                fresh, memories = await self._activations.memories_now(rebuilt)
                if fresh:
                    return memories, rebuilt, Outcome.ACTIVATION_OUTCOME_REBUILT
        elif self._settings.auto_preload:
            self._activations.schedule(cube_id)
        return memories, None, Outcome.ACTIVATION_OUTCOME_STALE_FALLBACK

    async def _adapter(self, cube_id: str) -> memory_pb2.Memory | None:
        """The cube's current adapter (parametric memory): its newest live one."""
        adapters = await live_adapters(
            self._vault, cube_id, call_seconds=self._settings.vault_timeout_seconds
        )
        ready = [m for m in adapters if m.adapter.blob_key]
        return max(ready, key=lambda m: (m.create_time.seconds, m.create_time.nanos), default=None)

    async def run(self, request: scheduler_pb2.ChatRequest) -> AsyncIterator[scheduler_pb2.ChatResponse]:
        turn = check(request, self._settings)
        query = turn.messages[-1].content
        adapter = await self._adapter(turn.cube_id)
        if request.adapter_only:
            if adapter is None:
                raise FailedPrecondition(
                    f"cube {turn.cube_id} has no adapter; promote it first", reason="NO_ADAPTER"
                )
            retrieved, (prefix_memories, record, outcome) = [], ([], None, Outcome.ACTIVATION_OUTCOME_OFF)
        else:
            retrieved = await self._retriever.search(
                turn.cube_id, query, top_k=turn.top_k, token_budget=turn.memory_budget
            )
            prefix_memories, record, outcome = await self._prefix(turn.cube_id, request.activation_mode)
        in_prefix = {m.name for m in prefix_memories}
        scores = {m.name: a.score for a in retrieved for m in a.span}
        as_text = [m for a in retrieved for m in a.span if m.name not in in_prefix]

        report = scheduler_pb2.ChatReport(activation=outcome, kv_ref=record.kv_ref if record else "")
        kv_placement = (
            scheduler_pb2.PLACEMENT_KV_PREFIX if record is not None else scheduler_pb2.PLACEMENT_TEXT
        )
        report.memories.extend(_use(m, kv_placement, scores.get(m.name, 0.0)) for m in prefix_memories)
        report.memories.extend(_use(m, scheduler_pb2.PLACEMENT_TEXT, scores[m.name]) for m in as_text)
        if adapter is not None:
            report.memories.append(_use(adapter, scheduler_pb2.PLACEMENT_ADAPTER))

        result = GenerateResult()
        generate = GenerateRequest(
            prompt=render_rest(as_text, turn.messages),
            prefix=render_prefix(prefix_memories),
            cube_id=turn.cube_id,
            kv_ref=record.kv_ref if record is not None else "",
            adapter_ref=adapter.adapter.blob_key if adapter is not None else "",
            max_new_tokens=turn.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,
            seed=request.seed,
            stop=tuple(request.stop),
        )
        async for delta in self._generator.stream(generate, result):
            yield scheduler_pb2.ChatResponse(text_delta=delta)

        if record is not None and result.kv_status in ("missing", "mismatch"):
            report.activation = Outcome.ACTIVATION_OUTCOME_MISSING_FALLBACK
            for use in report.memories:
                if use.placement == scheduler_pb2.PLACEMENT_KV_PREFIX:
                    use.placement = scheduler_pb2.PLACEMENT_TEXT
        report.kv_status = result.kv_status
        report.prompt_tokens = result.prompt_tokens
        report.cached_tokens = result.cached_tokens
        report.completion_tokens = result.completion_tokens
        report.finish_reason = result.finish_reason
        yield scheduler_pb2.ChatResponse(report=report)

        if self._settings.auto_preload and not request.adapter_only:
            # Next-scene prediction: what this exchange is about is what the next turn will need.
            self._activations.schedule(turn.cube_id, hint=f"{query}\n{result.text}")
