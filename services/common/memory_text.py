"""The text of a turn memory as the reader writes it: "[8 May 2023] Caroline: words"."""

from __future__ import annotations

import re

from memos.type.v1 import memory_pb2

_DATE_PREFIX = re.compile(r"^\[[^\]]*\]\s*")


def said(memory: memory_pb2.Memory) -> str:
    """The words of a memory without the date and the speaker the reader puts in front."""
    text = _DATE_PREFIX.sub("", memory.text)
    if memory.speaker and text.startswith(memory.speaker + ":"):
        text = text[len(memory.speaker) + 1 :]
    return text.strip()
