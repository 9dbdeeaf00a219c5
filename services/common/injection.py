"""Memories that read like instructions to a model (memory poisoning, prompt injection).

A stored memory is data. Text in it that addresses the model (``ignore previous instructions``,
``from now on you must``, a fake system turn, ...) is what the published memory-injection attacks
plant, so the reader flags such a memory at ingest (label ``memos.injection`` = the matched
rules); flagged memories stay out of KV prefixes, and every memory reaches a prompt only as a
quoted, neutralized line (prompt.py). Flagging is a heuristic on top of quoting, not instead of it.
"""

from __future__ import annotations

import re

from memos.type.v1 import memory_pb2

from .memory_text import said

LABEL = "memos.injection"

_RULES: dict[str, str] = {
    "override": r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(previous|prior|above|earlier|all|any|your|the|system)\b.{0,30}\b(instructions?|prompts?|rules?|guidelines?|directions?|context|messages?)\b",
    "new_rules": r"\b(new|updated|real|actual|hidden|secret)\s+(instructions?|rules?|system prompt|directives?)\s*[:\-]",
    "role_change": r"\b(you are now|from now on,? you|pretend (to be|you are)|act as (an?|the)|roleplay as|you must now|your new (role|task|goal) is)\b",
    "obligation": r"\b(always|never|must)\b.{0,30}\b(answer|respond|reply|say|tell|recommend|include|output|mention)\b.{0,60}\b(user|anyone|everyone|whoever|assistant)\b",
    "model_address": r"\b(dear|attention|note to|message (for|to))\s+(ai|assistant|model|llm|chatbot|gpt)\b|\b(ai|assistant|model|llm)\s*[:,]\s*(please\s+)?(ignore|follow|obey|remember to|you must)",
    "turn_markup": r"<\|im_(start|end)\|>|<\|endoftext\|>|\[/?INST\]|<</?SYS>>|^\s*(###\s*)?(system|assistant)\s*:|</?memories>",
    "exfiltration": r"\b(reveal|print|output|send|leak|disclose|repeat)\b.{0,30}\b(system prompt|instructions|api key|password|secrets?|credentials|other users?)\b",
    "tool_call": r"\b(call|invoke|execute|run)\b.{0,20}\b(tool|function|command|shell|curl|http)\b.{0,40}(https?://|\bwith\b)",
}
_COMPILED = {name: re.compile(pattern, re.IGNORECASE | re.MULTILINE) for name, pattern in _RULES.items()}


def instruction_rules(text: str) -> list[str]:
    """The rules ``text`` trips, in a stable order (empty: it reads as plain data)."""
    return [name for name, rule in _COMPILED.items() if rule.search(text)]


def is_flagged(labels: dict[str, str] | object) -> bool:
    return LABEL in labels  # type: ignore[operator]


def relabel(memory: memory_pb2.Memory) -> None:
    """Set or clear the flag from the memory's own words (the "[date] speaker: " a turn item is
    rendered with is not the speaker's words). The label is the service's, not the client's."""
    rules = instruction_rules(said(memory))
    if rules:
        memory.labels[LABEL] = ",".join(rules)
    else:
        memory.labels.pop(LABEL, None)
