"""The text of a turn memory as the reader writes it: "[8 May 2023] Caroline: words"."""

from __future__ import annotations

import re

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens

from .timeparse import HUMAN_DATE

# The date line the reader puts in front, exactly: words in brackets that are not a date are
# the speaker's (and are read for injected instructions).
DATE_PREFIX = re.compile(rf"^\[{HUMAN_DATE}\] ")


def said(memory: memory_pb2.Memory) -> str:
    """The words of a memory without the date and the speaker the reader puts in front."""
    text = DATE_PREFIX.sub("", memory.text, count=1)
    if memory.speaker and text.startswith(memory.speaker + ":"):
        text = text[len(memory.speaker) + 1 :]
    return text.strip()


def tokens_of(memory: memory_pb2.Memory) -> int:
    """The memory's tokens: the count the vault stored with it, counted here for a memory that
    has none (not read from the vault)."""
    return memory.tokens or count_tokens(memory.text)
